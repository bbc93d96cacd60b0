/**
 * Backend simulator: a UDP service with a known per-packet cost, to stand behind flowlb in benchmarks.
 * - echo: replies to the sender with the request unchanged plus an identity trailer (packet.ts), so the
 *   generator's probe survives and it can count which backend served each flow;
 * - sink: counts only.
 * `costUs` busy-waits that long per packet (on the event loop, like real synchronous work would).
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import { formatHostPort, parseHostPort } from './address.js';
import { GenError } from './errors.js';
import { encodeIdentityTrailer } from './packet.js';

export type BackendMode = 'echo' | 'sink';
export const DEFAULT_BACKEND_ID = 'backend';
export const DEFAULT_STATS_INTERVAL_MS = 1000;
const MAX_REPLY_BYTES = 65_507;
export const MAX_COST_US = 1_000_000;
export const MIN_STATS_INTERVAL_MS = 10;

export interface BackendOptions {
  /** "HOST:PORT" ("[::1]:0" for any free port). */
  listen: string | { host: string; port: number };
  mode?: BackendMode;
  /**
   * Work per packet, microseconds: a busy loop on the monotonic clock, on the event loop like real
   * synchronous work. It is wall time: on a contended machine the loop can be descheduled mid-way and
   * burn less CPU than this (stats().processCpuUs shows what it really used). Default 0.
   */
  costUs?: number;
  /** Identity appended to every echo reply; 1..64 UTF-8 bytes. Default "backend". */
  id?: string;
  /** Append the identity trailer to echo replies. Default true; false gives a plain echo. */
  identity?: boolean;
  /** Write stats() as JSON to this file every statsIntervalMs (atomically: temp file and rename). */
  statsFile?: string;
  statsIntervalMs?: number;
  /** SO_RCVBUF / SO_SNDBUF (the kernel doubles and caps it). */
  socketBufferBytes?: number;
}

export interface BackendStats {
  id: string;
  mode: BackendMode;
  address: string;
  port: number;
  received: number;
  sent: number;
  bytesReceived: number;
  bytesSent: number;
  /** Echo replies sent without the identity trailer because it would not fit in a datagram. */
  untagged: number;
  /** Socket errors (a reply to a closed port shows up here). */
  errors: number;
  /** Wall time spent in the cost busy loop, microseconds. */
  busyUs: number;
  /** CPU time of this whole process since start, microseconds (meaningful when the backend has its own process). */
  processCpuUs: number;
  uptimeMs: number;
}

export interface BackendHandle {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  readonly id: string;
  stats(): BackendStats;
  /** Stops receiving, writes the stats file a last time, and resolves with the final stats. */
  close(): Promise<BackendStats>;
}

interface Counters {
  received: number;
  sent: number;
  bytesReceived: number;
  bytesSent: number;
  untagged: number;
  errors: number;
  busyUs: number;
}

function burn(costMs: number): number {
  const t0 = performance.now();
  const end = t0 + costMs;
  let t = t0;
  while (t < end) t = performance.now();
  return t - t0;
}

export async function startBackend(opts: BackendOptions): Promise<BackendHandle> {
  const ep = typeof opts.listen === 'string' ? parseHostPort(opts.listen, 'listen', true) : parseHostPort(formatHostPort(opts.listen), 'listen', true);
  const mode: BackendMode = opts.mode ?? 'echo';
  if (mode !== 'echo' && mode !== 'sink') throw new GenError('ERR_GEN_OPTION', `mode must be echo or sink, got ${String(mode)}`);
  const costUs = opts.costUs ?? 0;
  if (!Number.isFinite(costUs) || costUs < 0 || costUs > MAX_COST_US) throw new GenError('ERR_GEN_OPTION', `costUs must be in [0, ${MAX_COST_US}], got ${costUs}`);
  const id = opts.id ?? DEFAULT_BACKEND_ID;
  let trailer: Buffer;
  try {
    trailer = encodeIdentityTrailer(id);
  } catch (e) {
    throw new GenError('ERR_GEN_OPTION', `id: ${(e as Error).message}`);
  }
  const tag = opts.identity !== false;
  const statsIntervalMs = opts.statsIntervalMs ?? DEFAULT_STATS_INTERVAL_MS;
  if (!(statsIntervalMs >= MIN_STATS_INTERVAL_MS)) throw new GenError('ERR_GEN_OPTION', `statsIntervalMs must be >= ${MIN_STATS_INTERVAL_MS}, got ${statsIntervalMs}`);

  const c: Counters = { received: 0, sent: 0, bytesReceived: 0, bytesSent: 0, untagged: 0, errors: 0, busyUs: 0 };
  const costMs = costUs / 1000;
  const socket = dgram.createSocket({
    type: ep.family === 6 ? 'udp6' : 'udp4',
    ...(opts.socketBufferBytes ? { recvBufferSize: opts.socketBufferBytes, sendBufferSize: opts.socketBufferBytes } : {}),
  });
  const onMessage = (msg: Buffer, rinfo: dgram.RemoteInfo): void => {
    c.received++;
    c.bytesReceived += msg.length;
    if (costMs > 0) c.busyUs += burn(costMs) * 1000;
    if (mode === 'sink') return;
    if (tag && msg.length + trailer.length <= MAX_REPLY_BYTES) {
      // Two buffers, one datagram (sendmsg with an iovec): the request is not copied.
      socket.send([msg, trailer], rinfo.port, rinfo.address);
      c.bytesSent += msg.length + trailer.length;
    } else {
      if (tag) c.untagged++;
      socket.send(msg, rinfo.port, rinfo.address);
      c.bytesSent += msg.length;
    }
    c.sent++;
  };
  socket.on('message', onMessage);

  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error): void => reject(new GenError('ERR_GEN_SOCKET', `bind ${formatHostPort(ep)} failed: ${err.message}`, { cause: err }));
    socket.once('error', fail);
    socket.bind({ address: ep.host, port: ep.port, exclusive: true }, () => {
      socket.off('error', fail);
      resolve();
    });
  });
  socket.on('error', () => {
    c.errors++;
  });
  const bound = socket.address();
  const startedMs = performance.now();
  const cpu0 = process.cpuUsage();

  const stats = (): BackendStats => {
    const cpu = process.cpuUsage(cpu0);
    return {
      id,
      mode,
      address: bound.address,
      port: bound.port,
      ...c,
      busyUs: Math.round(c.busyUs),
      processCpuUs: cpu.user + cpu.system,
      uptimeMs: Math.round(performance.now() - startedMs),
    };
  };

  let writing: Promise<void> | null = null;
  const writeStats = (): Promise<void> => {
    if (!opts.statsFile) return Promise.resolve();
    if (writing) return writing;
    const file = opts.statsFile;
    const tmp = `${file}.${process.pid}.tmp`;
    writing = fs.promises
      .writeFile(tmp, JSON.stringify(stats(), null, 2) + '\n')
      .then(() => fs.promises.rename(tmp, file))
      .catch(() => {
        c.errors++;
      })
      .finally(() => {
        writing = null;
      });
    return writing;
  };
  const statsTimer = opts.statsFile ? setInterval(() => void writeStats(), statsIntervalMs) : null;
  statsTimer?.unref();

  let closed: Promise<BackendStats> | null = null;
  return {
    address: bound.address,
    port: bound.port,
    family: ep.family,
    id,
    stats,
    close(): Promise<BackendStats> {
      closed ??= (async () => {
        if (statsTimer) clearInterval(statsTimer);
        await new Promise<void>((resolve) => socket.close(() => resolve()));
        if (writing) await writing;
        await writeStats();
        return stats();
      })();
      return closed;
    },
  };
}
