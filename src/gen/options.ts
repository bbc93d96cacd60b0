/**
 * Generator options: what callers pass (GenOptions), and the validated, immutable, JSON-safe form every
 * sender process works from (ResolvedGenOptions). Defaults are named constants so --help can quote them.
 */
import crypto from 'node:crypto';
import { checkFlowCapacity, formatHostPort, MAX_SRC_ADDRS, parseHostPort } from './address.js';
import type { HostPort } from './address.js';
import { GenError } from './errors.js';
import { formatDistribution, parseDistribution } from './flows.js';
import type { Distribution } from './flows.js';
import {
  PROBE_HEADER_BYTES,
  RTP_DEFAULT_PAYLOAD_BYTES,
  RTP_DEFAULT_PAYLOAD_TYPE,
  RTP_DEFAULT_STREAM_PPS,
  RTP_DEFAULT_TS_STEP,
  RTP_HEADER_BYTES,
} from './packet.js';

export const DEFAULT_FLOWS = 16;
export const DEFAULT_RATE_PPS = 1000;
export const DEFAULT_DURATION_MS = 5000;
export const DEFAULT_SIZE_BYTES = 64;
export const DEFAULT_DRAIN_MS = 1000;
/** Packets sent per timer turn at most; beyond it the sender yields so replies get read. */
export const DEFAULT_MAX_BURST = 128;
export const DEFAULT_SEED = 1;
export const MAX_PROCS = 64;
export const MAX_DATAGRAM_BYTES = 65_507;
/** With --count and no --duration the send phase still ends by itself: at 4x the ideal time plus 10 s. */
const COUNT_ONLY_SLACK_FACTOR = 4;
const COUNT_ONLY_SLACK_MS = 10_000;

export interface GenProgress {
  elapsedMs: number;
  sent: number;
  received: number;
}

export interface GenOptions {
  /** "HOST:PORT" or "[IPv6]:PORT" (IP literals and localhost), or an endpoint object. */
  target: string | { host: string; port: number };
  /** Number of flows (distinct source address:port, one socket each). Default 16. */
  flows?: number;
  /** Total offered rate, packets/s over all flows. Default 1000; with rtp, 50 per flow. */
  ratePps?: number;
  /** Send phase length. Default 5000 when `count` is not given. */
  durationMs?: number;
  /** Total packets; the send phase ends at whichever of count and duration comes first. */
  count?: number;
  /** Datagram bytes (with rtp: RTP payload bytes, default 160). At least 24 (the probe header). Default 64. */
  sizeBytes?: number;
  /** "uniform" (round robin) or "zipf:<s>" (flow i weighs 1/(i+1)^s). Default uniform. */
  distribution?: string | Distribution;
  /** IPv4: spread flows over source addresses 127.0.0.1 .. 127.0.0.K. Default 1. */
  srcAddrs?: number;
  /** Sender processes, each with a disjoint share of the flows and the rate. Default 1 (in-process). */
  procs?: number;
  /** Real RTP: 12-byte header, probe inside the payload, per-stream SSRC, seq +1, timestamp + tsStep. */
  rtp?: boolean;
  /** RTP payload type. Default 0 (PCMU). */
  rtpPayloadType?: number;
  /** RTP timestamp increment per packet. Default: the RTP payload size (one G.711 sample per byte: 160). */
  rtpTsStep?: number;
  /** How long to wait for outstanding replies after the last send. Default 1000. */
  drainMs?: number;
  /** false for a sink target: no drain, and loss is not measured. Default true. */
  expectReplies?: boolean;
  /** connect() each flow socket to the target: faster sends, and only the target's replies are read. Default true. */
  connect?: boolean;
  maxBurst?: number;
  /** Seed of the Zipf draw and the RTP initial values, so runs are reproducible. Default 1. */
  seed?: number;
  /** SO_RCVBUF / SO_SNDBUF of every flow socket (the kernel doubles and caps them); default: the system's. */
  socketBufferBytes?: number;
  /** Add flowSent / flowReceived arrays (by flow id) to the result. */
  includePerFlow?: boolean;
  /** Ends the send phase early; the drain and the result still follow. */
  signal?: AbortSignal;
  onProgress?: (p: GenProgress) => void;
  progressIntervalMs?: number;
  /** How errors name a bad option: 'fields' (default: `ratePps`) or 'flags' (`--rate`, as `flowlb gen` does). */
  optionNames?: OptionNames;
}

/** Validated options, plain data (sent to sender processes as JSON). */
export interface ResolvedGenOptions {
  readonly target: HostPort;
  readonly targetText: string;
  readonly flows: number;
  readonly ratePps: number;
  readonly durationMs: number | null;
  readonly count: number | null;
  /** Hard end of the send phase, whatever the limits (bounds a count-only run that falls behind). */
  readonly sendLimitMs: number;
  readonly datagramBytes: number;
  readonly distribution: Distribution;
  readonly srcAddrs: number;
  readonly procs: number;
  readonly rtp: boolean;
  readonly rtpPayloadType: number;
  readonly rtpTsStep: number;
  readonly drainMs: number;
  readonly expectReplies: boolean;
  readonly connect: boolean;
  readonly maxBurst: number;
  readonly seed: number;
  readonly socketBufferBytes: number | null;
  readonly includePerFlow: boolean;
  readonly progressIntervalMs: number;
  /** Random per run; replies of another run are ignored. */
  readonly runId: number;
}

/**
 * How a bad option is named in an error: `fields` (the library's, e.g. `ratePps`; the default) or `flags`
 * (the `flowlb gen` flag the user typed, e.g. `--rate`, in the flag's own unit: seconds for --duration).
 */
export type OptionNames = 'fields' | 'flags';

/** The `flowlb gen` flag of each option field, and how many field units make one flag unit. */
const FLAG_OF: Readonly<Record<string, { flag: string; scale?: number; unit?: string }>> = {
  flows: { flag: '--flows' },
  ratePps: { flag: '--rate' },
  durationMs: { flag: '--duration', scale: 1000, unit: ' seconds' },
  count: { flag: '--count' },
  sizeBytes: { flag: '--size', unit: ' bytes' },
  srcAddrs: { flag: '--src-addrs' },
  procs: { flag: '--procs' },
  rtpPayloadType: { flag: '--rtp-pt' },
  rtpTsStep: { flag: '--rtp-ts-step' },
  drainMs: { flag: '--drain', unit: ' ms' },
  maxBurst: { flag: '--burst' },
  seed: { flag: '--seed' },
  socketBufferBytes: { flag: '--sockbuf', unit: ' bytes' },
};

/** The name of `field` in errors, and its value, bounds and unit as they read under that name. */
function named(names: OptionNames, field: string): { name: string; show: (x: number | undefined) => number | undefined; unit: string } {
  const f = names === 'flags' ? FLAG_OF[field] : undefined;
  if (f === undefined) return { name: field, show: (x) => x, unit: '' };
  const scale = f.scale ?? 1;
  return { name: f.flag, show: (x) => (x === undefined ? x : x / scale), unit: f.unit ?? '' };
}

function optionError(names: OptionNames, field: string, kind: string, v: number | undefined, min: number, max: number, note = ''): GenError {
  const n = named(names, field);
  return new GenError('ERR_GEN_OPTION', `${n.name} must be ${kind} in [${n.show(min)}, ${n.show(max)}]${n.unit}${note}, got ${n.show(v)}`);
}

function intIn(names: OptionNames, field: string, v: number | undefined, def: number, min: number, max: number, note = ''): number {
  const x = v ?? def;
  if (!Number.isInteger(x) || x < min || x > max) throw optionError(names, field, 'an integer', v, min, max, note);
  return x;
}

function numIn(names: OptionNames, field: string, v: number | undefined, def: number, min: number, max: number): number {
  const x = v ?? def;
  if (typeof x !== 'number' || !Number.isFinite(x) || x < min || x > max) throw optionError(names, field, 'a number', v, min, max);
  return x;
}

export function resolveGenOptions(o: GenOptions): ResolvedGenOptions {
  const names = o.optionNames ?? 'fields';
  const targetName = names === 'flags' ? '--target' : 'target';
  const target = typeof o.target === 'string' ? parseHostPort(o.target, targetName) : parseHostPort(formatHostPort(o.target), targetName);
  const flows = intIn(names, 'flows', o.flows, DEFAULT_FLOWS, 1, 10_000_000);
  const rtp = o.rtp === true;
  const ratePps = numIn(names, 'ratePps', o.ratePps, rtp ? RTP_DEFAULT_STREAM_PPS * flows : DEFAULT_RATE_PPS, 0.001, 100_000_000);
  const count = o.count === undefined ? null : intIn(names, 'count', o.count, 0, 1, Number.MAX_SAFE_INTEGER);
  const durationMs = o.durationMs === undefined ? (count === null ? DEFAULT_DURATION_MS : null) : numIn(names, 'durationMs', o.durationMs, 0, 1, 86_400_000);
  const countOnlyMs = count === null ? Infinity : ((count / ratePps) * 1000) * COUNT_ONLY_SLACK_FACTOR + COUNT_ONLY_SLACK_MS;
  const sendLimitMs = Math.min(durationMs ?? Infinity, countOnlyMs);
  const headerBytes = rtp ? RTP_HEADER_BYTES : 0;
  const size = intIn(names, 'sizeBytes', o.sizeBytes, rtp ? RTP_DEFAULT_PAYLOAD_BYTES : DEFAULT_SIZE_BYTES, PROBE_HEADER_BYTES, MAX_DATAGRAM_BYTES - headerBytes, rtp ? ' (the RTP payload, with --rtp)' : '');
  const distribution = parseDistribution(o.distribution ?? 'uniform');
  const srcAddrs = intIn(names, 'srcAddrs', o.srcAddrs, 1, 1, MAX_SRC_ADDRS);
  const srcAddrsName = named(names, 'srcAddrs').name;
  if (target.family === 6 && srcAddrs !== 1) throw new GenError('ERR_GEN_OPTION', `${srcAddrsName} must be 1 with an IPv6 target (it sends from ::1 only), got ${srcAddrs}`);
  const procs = intIn(names, 'procs', o.procs, 1, 1, MAX_PROCS);
  if (procs > flows) {
    throw new GenError('ERR_GEN_OPTION', `${named(names, 'procs').name} ${procs} cannot exceed ${named(names, 'flows').name} ${flows}: each process owns whole flows`);
  }
  checkFlowCapacity(flows, Math.ceil(flows / procs), srcAddrs, target.family);
  return Object.freeze({
    target,
    targetText: formatHostPort(target),
    flows,
    ratePps,
    durationMs,
    count,
    sendLimitMs,
    datagramBytes: headerBytes + size,
    distribution,
    srcAddrs,
    procs,
    rtp,
    rtpPayloadType: intIn(names, 'rtpPayloadType', o.rtpPayloadType, RTP_DEFAULT_PAYLOAD_TYPE, 0, 127),
    // G.711 carries one 8 kHz sample per byte, so the timestamp advances by the payload size (160 per 20 ms).
    rtpTsStep: intIn(names, 'rtpTsStep', o.rtpTsStep, rtp ? size : RTP_DEFAULT_TS_STEP, 0, 0xffff_ffff),
    drainMs: numIn(names, 'drainMs', o.drainMs, DEFAULT_DRAIN_MS, 0, 600_000),
    expectReplies: o.expectReplies !== false,
    connect: o.connect !== false,
    maxBurst: intIn(names, 'maxBurst', o.maxBurst, DEFAULT_MAX_BURST, 1, 1_000_000),
    seed: intIn(names, 'seed', o.seed, DEFAULT_SEED, 0, 0xffff_ffff),
    socketBufferBytes: o.socketBufferBytes === undefined ? null : intIn(names, 'socketBufferBytes', o.socketBufferBytes, 0, 1024, 1 << 30),
    includePerFlow: o.includePerFlow === true,
    progressIntervalMs: intIn(names, 'progressIntervalMs', o.progressIntervalMs, 1000, 10, 3_600_000),
    runId: crypto.randomBytes(4).readUInt32BE(0),
  });
}

export function describeDistribution(o: ResolvedGenOptions): string {
  return formatDistribution(o.distribution);
}
