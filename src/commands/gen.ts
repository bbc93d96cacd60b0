/**
 * `flowlb gen`: the UDP traffic generator (src/gen/). Three modes:
 * - a run: `flowlb gen --target HOST:PORT [--flows N --rate PPS --duration S | --count N ...]`;
 * - `--find-max`: the highest rate with at most --loss-pct loss (short trials, bounded in number);
 * - `--self-test`: the generator's own ceiling against a Node sink/echo in a child process.
 * Values are validated by resolveGenOptions (src/gen/options.ts), which also holds the defaults quoted here.
 */
import fs from 'node:fs';
import type { CommandModule, Options } from 'yargs';

import { DEFAULT_DRAIN_MS, DEFAULT_DURATION_MS, DEFAULT_FLOWS, DEFAULT_MAX_BURST, DEFAULT_RATE_PPS, DEFAULT_SEED, DEFAULT_SIZE_BYTES, MAX_PROCS, resolveGenOptions } from '../gen/options.js';
import type { GenOptions } from '../gen/options.js';
import { RTP_DEFAULT_PAYLOAD_BYTES, RTP_DEFAULT_STREAM_PPS, RTP_DEFAULT_TS_STEP } from '../gen/packet.js';
import { findMaxRate, GenError, runGenerator } from '../gen/run.js';
import { runSelfTest } from '../gen/self-test.js';
import { formatFindMax, formatGenResult, formatTrial } from '../gen/summary.js';

export interface GenFlags {
  target?: string;
  flows?: number;
  rate?: number;
  duration?: number;
  count?: number;
  size?: number;
  dist?: string;
  'src-addrs'?: number;
  procs?: number;
  rtp?: boolean;
  'rtp-pt'?: number;
  'rtp-ts-step'?: number;
  drain?: number;
  replies?: boolean;
  connect?: boolean;
  burst?: number;
  seed?: number;
  sockbuf?: number;
  json?: string;
  'per-flow'?: boolean;
  progress?: boolean;
  quiet?: boolean;
  'find-max'?: boolean;
  'loss-pct'?: number;
  'max-rate'?: number;
  'max-trials'?: number;
  trial?: number;
  'self-test'?: boolean;
}

const num = (describe: string, defaultDescription?: string): Options => ({ type: 'number', requiresArg: true, describe, ...(defaultDescription ? { defaultDescription } : {}) });
const str = (describe: string, defaultDescription?: string): Options => ({ type: 'string', requiresArg: true, describe, ...(defaultDescription ? { defaultDescription } : {}) });
const bool = (describe: string, defaultDescription: string): Options => ({ type: 'boolean', describe, defaultDescription });

export const GEN_OPTIONS = {
  target: str('Where to send: HOST:PORT or [IPv6]:PORT (IP literal or localhost). Required unless --self-test'),
  flows: num('Flows (distinct source ports, one socket each; bounded by ulimit -n per process)', String(DEFAULT_FLOWS)),
  rate: num('Offered packets/s over all flows', `${DEFAULT_RATE_PPS}; with --rtp ${RTP_DEFAULT_STREAM_PPS} per flow`),
  duration: num('Send phase in seconds (ends at --count if that comes first)', `${DEFAULT_DURATION_MS / 1000} unless --count is given`),
  count: num('Total packets to send'),
  size: num('Datagram bytes, at least 24 (the probe header); with --rtp: RTP payload bytes', `${DEFAULT_SIZE_BYTES}; with --rtp ${RTP_DEFAULT_PAYLOAD_BYTES}`),
  dist: str('Load over flows: uniform (round robin) or zipf:S (flow i weighs 1/(i+1)^S)', 'uniform'),
  'src-addrs': num('IPv4: spread flows over source addresses 127.0.0.1..127.0.0.K (max 254)', '1'),
  procs: num(`Sender processes (1 to ${MAX_PROCS}), each with a disjoint share of the flows; use when one cannot keep up`, '1'),
  rtp: bool('Send RTP (V=2, PCMU, per-stream SSRC, seq +1, timestamp +160 per 20 ms packet), probe inside the payload', 'false'),
  'rtp-pt': num('RTP payload type', '0 (PCMU)'),
  'rtp-ts-step': num('RTP timestamp increment per packet', `the RTP payload size (${RTP_DEFAULT_TS_STEP} by default: G.711, one sample per byte)`),
  drain: num('Milliseconds to wait for outstanding replies after the last send', String(DEFAULT_DRAIN_MS)),
  replies: bool('Expect replies (--no-replies for a sink: no drain, loss not measured)', 'true'),
  connect: bool('connect() flow sockets to the target (--no-connect accepts replies from any address)', 'true'),
  burst: num('Most packets sent per timer turn before yielding to receive', String(DEFAULT_MAX_BURST)),
  seed: num('Seed of the Zipf draw and RTP initial values', String(DEFAULT_SEED)),
  sockbuf: num('SO_RCVBUF/SO_SNDBUF of each flow socket, bytes', 'system default'),
  json: str('Write the result as JSON to this file'),
  'per-flow': bool('Include per-flow sent/received arrays in the JSON', 'false'),
  progress: bool('Print sent/received rates every second to stderr', 'true on a terminal'),
  quiet: bool('Print nothing but errors (use with --json)', 'false'),
  'find-max': bool('Search the highest --rate with at most --loss-pct loss (short trials)', 'false'),
  'loss-pct': num('Loss threshold of --find-max and --self-test, percent', '0.1'),
  'max-rate': num('Highest rate --find-max and --self-test try', '1000000'),
  'max-trials': num('Most trials of --find-max and --self-test', '12 (--self-test: 8)'),
  trial: num('Seconds per trial of --find-max and --self-test', '2 (--self-test: 1)'),
  'self-test': bool("Measure the generator's own ceiling against a Node sink and echo in a child process", 'false'),
} satisfies Record<string, Options>;

/** GenOptions from flags (validation happens in resolveGenOptions). */
export function genOptionsFromFlags(f: GenFlags): GenOptions {
  if (f.target === undefined) throw new GenError('ERR_GEN_OPTION', '--target HOST:PORT is required (or use --self-test)');
  const o: GenOptions = { target: f.target, optionNames: 'flags' };
  if (f.flows !== undefined) o.flows = f.flows;
  if (f.rate !== undefined) o.ratePps = f.rate;
  if (f.duration !== undefined) o.durationMs = f.duration * 1000;
  if (f.count !== undefined) o.count = f.count;
  if (f.size !== undefined) o.sizeBytes = f.size;
  if (f.dist !== undefined) o.distribution = f.dist;
  if (f['src-addrs'] !== undefined) o.srcAddrs = f['src-addrs'];
  if (f.procs !== undefined) o.procs = f.procs;
  if (f.rtp !== undefined) o.rtp = f.rtp;
  if (f['rtp-pt'] !== undefined) o.rtpPayloadType = f['rtp-pt'];
  if (f['rtp-ts-step'] !== undefined) o.rtpTsStep = f['rtp-ts-step'];
  if (f.drain !== undefined) o.drainMs = f.drain;
  if (f.replies !== undefined) o.expectReplies = f.replies;
  if (f.connect !== undefined) o.connect = f.connect;
  if (f.burst !== undefined) o.maxBurst = f.burst;
  if (f.seed !== undefined) o.seed = f.seed;
  if (f.sockbuf !== undefined) o.socketBufferBytes = f.sockbuf;
  if (f['per-flow'] !== undefined) o.includePerFlow = f['per-flow'];
  return o;
}

export interface CliIo {
  out: (line: string) => void;
  err: (line: string) => void;
}

const stdio: CliIo = { out: (l) => process.stdout.write(l + '\n'), err: (l) => process.stderr.write(l + '\n') };

function cannotWrite(file: string, err: unknown): GenError {
  return new GenError('ERR_GEN_OPTION', `--json ${file}: cannot write (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
}

function writeJson(file: string, value: unknown): void {
  try { fs.writeFileSync(file, JSON.stringify(value, null, 2) + '\n'); } catch (err) { throw cannotWrite(file, err); }
}

/** Before a run that may take minutes: a --json file that cannot be written fails now, not after the run. */
function checkJsonWritable(file: string): void {
  try { fs.closeSync(fs.openSync(file, 'a')); } catch (err) { throw cannotWrite(file, err); }
}

/** Bounds of the search flags (--find-max, --self-test); the search itself starts at 10 pps. */
const MIN_MAX_RATE = 10;
const MAX_MAX_RATE = 100_000_000;
const MAX_TRIALS = 1000;
const MAX_TRIAL_S = 86_400;
/** Flags that only --find-max and --self-test read. */
const SEARCH_ONLY_FLAGS = ['loss-pct', 'max-rate', 'max-trials', 'trial'] as const;

/**
 * The flags that only the searches read, checked before anything starts, and rejected without a search. Each is checked here, under the name
 * the user typed: findMaxRate and the trial runs would name them after their own fields (maxRate, durationMs).
 */
function checkSearchFlags(f: GenFlags): void {
  const bad = (text: string): GenError => new GenError('ERR_GEN_OPTION', text);
  const lossPct = f['loss-pct'];
  if (lossPct !== undefined && !(Number.isFinite(lossPct) && lossPct >= 0 && lossPct < 100)) {
    throw bad(`--loss-pct must be a percentage from 0 to below 100, got ${lossPct}`);
  }
  const maxRate = f['max-rate'];
  if (maxRate !== undefined && !(Number.isFinite(maxRate) && maxRate >= MIN_MAX_RATE && maxRate <= MAX_MAX_RATE)) {
    throw bad(`--max-rate must be a number in [${MIN_MAX_RATE}, ${MAX_MAX_RATE}], got ${maxRate}`);
  }
  const maxTrials = f['max-trials'];
  if (maxTrials !== undefined && !(Number.isInteger(maxTrials) && maxTrials >= 1 && maxTrials <= MAX_TRIALS)) {
    throw bad(`--max-trials must be an integer in [1, ${MAX_TRIALS}], got ${maxTrials}`);
  }
  const trial = f.trial;
  if (trial !== undefined && !(Number.isFinite(trial) && trial >= 0.001 && trial <= MAX_TRIAL_S)) {
    throw bad(`--trial must be a number in [0.001, ${MAX_TRIAL_S}] seconds, got ${trial}`);
  }
  // A plain run has no loss threshold, no search and no trials: these would be ignored without a word.
  if (!f['find-max'] && !f['self-test']) {
    const given = SEARCH_ONLY_FLAGS.find((name) => f[name] !== undefined);
    if (given !== undefined) throw bad(`--${given} applies only with --find-max or --self-test`);
  }
  // The self-test runs its own trials against its own sink and echo: it reads flows, size, procs, the search flags
  // and the address family of --target; anything else would be ignored without a word.
  if (f['self-test']) {
    const given = SELF_TEST_IGNORES.find((name) => f[name] !== undefined);
    if (given !== undefined) throw bad(`--${f[given] === false ? 'no-' : ''}${given} has no effect with --self-test (it reads --flows, --size, --procs, --target's address family and the search flags)`);
  }
}

/** Flags a plain run or --find-max reads and --self-test does not. */
const SELF_TEST_IGNORES = ['rate', 'duration', 'count', 'dist', 'src-addrs', 'rtp', 'rtp-pt', 'rtp-ts-step', 'drain', 'burst', 'seed', 'sockbuf', 'per-flow', 'find-max', 'replies', 'connect'] as const;

/**
 * Runs `flowlb gen` with parsed flags. The first SIGINT/SIGTERM ends the send phase early (the drain and
 * the summary still follow); a second one exits at once.
 */
export async function runGenCli(f: GenFlags, io: CliIo = stdio): Promise<void> {
  const say = f.quiet ? () => undefined : io.out;
  if (f.json) checkJsonWritable(f.json);
  checkSearchFlags(f);
  if (f['self-test']) {
    const r = await runSelfTest({
      ...(f.target?.startsWith('[') ? { family: 6 as const } : {}),
      ...(f.flows !== undefined ? { flows: f.flows } : {}),
      ...(f.size !== undefined ? { sizeBytes: f.size } : {}),
      ...(f.procs !== undefined ? { procs: f.procs } : {}),
      ...(f.trial !== undefined ? { trialMs: f.trial * 1000 } : {}),
      ...(f['max-trials'] !== undefined ? { maxTrials: f['max-trials'] } : {}),
      ...(f['loss-pct'] !== undefined ? { lossPct: f['loss-pct'] } : {}),
      ...(f['max-rate'] !== undefined ? { maxRate: f['max-rate'] } : {}),
      optionNames: 'flags',
      onPhase: (t) => say(t),
      onTrial: (t) => say(formatTrial(t)),
    });
    say(`generator send ceiling: ${Math.round(r.sendCeilingPps).toLocaleString('en-US')} pps (${r.sendOnly.flows} flows, ${r.sendOnly.datagramBytes} B, ${r.sendOnly.procs} process(es))`);
    say(`echo ceiling (generator + Node echo in a child, <= ${f['loss-pct'] ?? 0.1}% loss): ${r.echoMaxPps.toLocaleString('en-US')} pps`);
    if (r.echoSearch.result?.rtt) say(`  at that rate rtt p50 ${r.echoSearch.result.rtt.p50} us, p99 ${r.echoSearch.result.rtt.p99} us`);
    if (f.json) writeJson(f.json, r);
    return;
  }

  const opts = genOptionsFromFlags(f);
  const abort = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (++signals > 1) process.exit(130);
    io.err(`flowlb gen: ${sig}: stopping the send phase (again to exit at once)`);
    abort.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    opts.signal = abort.signal;
    if (f['find-max']) {
      // Every flag is checked before the first trial, --rate (the start rate) too: the trials override it.
      resolveGenOptions(opts);
      const lossPct = f['loss-pct'] ?? 0.1;
      const r = await findMaxRate(opts, {
        lossPct,
        ...(f.rate !== undefined ? { startRate: f.rate } : {}),
        ...(f['max-rate'] !== undefined ? { maxRate: f['max-rate'] } : {}),
        ...(f['max-trials'] !== undefined ? { maxTrials: f['max-trials'] } : {}),
        trialMs: (f.trial ?? 2) * 1000,
        signal: abort.signal,
        onTrial: (t) => say(formatTrial(t)),
      });
      say(formatFindMax(r, lossPct));
      if (r.result) say(formatGenResult(r.result));
      if (f.json) writeJson(f.json, r);
      return;
    }
    const showProgress = !f.quiet && (f.progress ?? process.stderr.isTTY === true);
    if (showProgress) {
      let last = { sent: 0, received: 0, elapsedMs: 0 };
      opts.onProgress = (p) => {
        const dt = (p.elapsedMs - last.elapsedMs) / 1000;
        if (dt > 0) {
          io.err(
            `  ${(p.elapsedMs / 1000).toFixed(1).padStart(6)} s  sent ${p.sent} (${Math.round((p.sent - last.sent) / dt)} pps)  ` +
              `received ${p.received} (${Math.round((p.received - last.received) / dt)} pps)`,
          );
        }
        last = p;
      };
    }
    const r = await runGenerator(opts);
    say(formatGenResult(r));
    if (f.json) writeJson(f.json, r);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

export const genCommand: CommandModule<object, GenFlags> = {
  command: 'gen',
  describe: 'UDP traffic generator: paced flows, loss/reorder/duplicate counts, RTT percentiles (also RTP)',
  builder: GEN_OPTIONS,
  handler: async (argv) => {
    await runGenCli(argv);
  },
};
