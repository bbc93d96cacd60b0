/**
 * `flowlb backend`: the backend simulator (src/gen/backend.ts), an echo or sink with a per-packet CPU cost
 * and an identity the generator counts replies by. Runs until SIGINT/SIGTERM (or --duration), then prints
 * its counts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { CommandModule, Options } from 'yargs';

import { DEFAULT_BACKEND_ID, DEFAULT_STATS_INTERVAL_MS, MAX_COST_US, MIN_STATS_INTERVAL_MS, startBackend } from '../gen/backend.js';
import type { BackendMode, BackendOptions, BackendStats } from '../gen/backend.js';
import { formatHostPort, parseHostPort } from '../gen/address.js';
import { encodeIdentityTrailer } from '../gen/packet.js';
import { GenError } from '../gen/errors.js';

export interface BackendFlags {
  listen?: string;
  mode?: string;
  'cost-us'?: number;
  id?: string;
  identity?: boolean;
  'stats-file'?: string;
  'stats-interval'?: number;
  duration?: number;
  sockbuf?: number;
}

export const BACKEND_OPTIONS = {
  listen: { type: 'string', requiresArg: true, describe: 'Address to receive on: HOST:PORT or [IPv6]:PORT (port 0 = any free port)', defaultDescription: '127.0.0.1:0' },
  mode: { type: 'string', requiresArg: true, choices: ['echo', 'sink'], describe: 'echo: reply with the request plus an identity trailer; sink: count only', defaultDescription: 'echo' },
  'cost-us': { type: 'number', requiresArg: true, describe: 'CPU microseconds burnt per packet (busy loop)', defaultDescription: '0' },
  id: { type: 'string', requiresArg: true, describe: 'Identity in echo replies (1 to 64 UTF-8 bytes)', defaultDescription: DEFAULT_BACKEND_ID },
  identity: { type: 'boolean', describe: 'Append the identity trailer to echo replies (--no-identity: plain echo)', defaultDescription: 'true' },
  'stats-file': { type: 'string', requiresArg: true, describe: 'Write counters as JSON to this file periodically and at exit' },
  'stats-interval': { type: 'number', requiresArg: true, describe: 'Milliseconds between stats-file writes', defaultDescription: String(DEFAULT_STATS_INTERVAL_MS) },
  duration: { type: 'number', requiresArg: true, describe: 'Stop by itself after this many seconds', defaultDescription: 'run until SIGINT/SIGTERM' },
  sockbuf: { type: 'number', requiresArg: true, describe: 'SO_RCVBUF/SO_SNDBUF, bytes', defaultDescription: 'system default' },
} satisfies Record<string, Options>;

export function formatBackendStats(s: BackendStats): string {
  return (
    `backend ${s.id} (${s.mode}) ${formatHostPort({ host: s.address, port: s.port })}: received ${s.received}, sent ${s.sent}, ` +
    `errors ${s.errors}, untagged ${s.untagged}, busy ${Math.round(s.busyUs / 1000)} ms, cpu ${Math.round(s.processCpuUs / 1000)} ms, up ${(s.uptimeMs / 1000).toFixed(1)} s`
  );
}

function fileKind(st: fs.Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  return 'not a file';
}

/**
 * Checked before starting, as it is written: FILE.PID.tmp in FILE's directory, then renamed over FILE. So FILE
 * must be a regular file or not exist yet, and its directory must take a new file. Opening FILE itself proved
 * neither: a file that cannot be replaced was only an "errors" count in the summary (/proc/version as root), and
 * a device was replaced by a regular file (/dev/null as root).
 */
function checkStatsFile(file: string): void {
  const code = (err: unknown): string => (err as NodeJS.ErrnoException).code ?? (err as Error).message;
  const fail = (why: string): GenError => new GenError('ERR_GEN_OPTION', `--stats-file ${file}: ${why}`);
  let st: fs.Stats | null = null;
  try { st = fs.statSync(file); } catch (err) {
    if (code(err) !== 'ENOENT') throw fail(`cannot write: ${code(err)}`);
  }
  if (st !== null && !st.isFile()) throw fail(`not a regular file (${fileKind(st)}): it is replaced on every write`);
  const probe = `${file}.${process.pid}.tmp`;
  try {
    fs.closeSync(fs.openSync(probe, 'w'));
    fs.unlinkSync(probe);
  } catch (err) {
    throw fail(st === null ? `cannot write: ${code(err)}` : `cannot write: cannot create a file in ${path.dirname(file)} to replace it with (${code(err)})`);
  }
}

export function backendOptionsFromFlags(f: BackendFlags): BackendOptions {
  // Checked here, naming the flags: startBackend's own checks name its option fields (costUs, statsIntervalMs).
  const o: BackendOptions = { listen: f.listen ?? '127.0.0.1:0' };
  parseHostPort(o.listen as string, '--listen', true);
  if (f.mode !== undefined) {
    if (f.mode !== 'echo' && f.mode !== 'sink') throw new GenError('ERR_GEN_OPTION', `--mode must be echo or sink, got ${f.mode}`);
    o.mode = f.mode as BackendMode;
  }
  if (f['cost-us'] !== undefined) {
    if (!(f['cost-us'] >= 0 && f['cost-us'] <= MAX_COST_US)) throw new GenError('ERR_GEN_OPTION', `--cost-us must be a number in [0, ${MAX_COST_US}] microseconds, got ${f['cost-us']}`);
    o.costUs = f['cost-us'];
  }
  if (f.id !== undefined) {
    try {
      encodeIdentityTrailer(f.id);
    } catch (e) {
      throw new GenError('ERR_GEN_OPTION', `--id ${(e as Error).message.replace(/^backend id /, '')}`);
    }
    o.id = f.id;
  }
  if (f.identity !== undefined) o.identity = f.identity;
  if (f['stats-file'] !== undefined) {
    checkStatsFile(f['stats-file']);
    o.statsFile = f['stats-file'];
  }
  if (f['stats-interval'] !== undefined) {
    if (!(f['stats-interval'] >= MIN_STATS_INTERVAL_MS)) throw new GenError('ERR_GEN_OPTION', `--stats-interval must be at least ${MIN_STATS_INTERVAL_MS} ms, got ${f['stats-interval']}`);
    o.statsIntervalMs = f['stats-interval'];
  }
  if (f.sockbuf !== undefined) {
    if (!Number.isInteger(f.sockbuf) || f.sockbuf < 1024 || f.sockbuf > 1 << 30) {
      throw new GenError('ERR_GEN_OPTION', `--sockbuf must be an integer in [1024, ${1 << 30}] bytes, got ${f.sockbuf}`);
    }
    o.socketBufferBytes = f.sockbuf;
  }
  return o;
}

/** Runs `flowlb backend` with parsed flags until a signal or --duration; resolves with the final stats. */
export async function runBackendCli(f: BackendFlags, out: (line: string) => void = (l) => process.stdout.write(l + '\n')): Promise<BackendStats> {
  if (f.duration !== undefined && !(f.duration > 0)) throw new GenError('ERR_GEN_OPTION', `--duration must be > 0 seconds, got ${f.duration}`);
  const b = await startBackend(backendOptionsFromFlags(f));
  out(`backend ${b.id} listening on ${formatHostPort({ host: b.address, port: b.port })} (${f.mode ?? 'echo'}, cost ${f['cost-us'] ?? 0} us)`);
  const reason = await new Promise<string>((resolve) => {
    const done = (why: string): void => {
      if (timer) clearTimeout(timer);
      process.off('SIGINT', done);
      process.off('SIGTERM', done);
      resolve(why);
    };
    const timer = f.duration !== undefined ? setTimeout(() => done('duration'), f.duration * 1000) : null;
    process.on('SIGINT', done);
    process.on('SIGTERM', done);
  });
  const stats = await b.close();
  out(`${formatBackendStats(stats)} (stopped by ${reason})`);
  return stats;
}

export const backendCommand: CommandModule<object, BackendFlags> = {
  command: 'backend',
  describe: 'Backend simulator: UDP echo (with an identity trailer) or sink, with a per-packet CPU cost',
  builder: BACKEND_OPTIONS,
  handler: async (argv) => {
    await runBackendCli(argv);
  },
};
