/**
 * flowlb configuration: one readonly object, built once from defaults, an optional JSON file and flags
 * (flags win), validated once, then immutable. Defaults are named constants so the README and --help quote them.
 */
import { readFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';

import { ConfigError } from './errors.js';

export const DEFAULT_LISTEN = '127.0.0.1:5300';
export const DEFAULT_HTTP = '127.0.0.1:9464';
export const DEFAULT_BUCKETS = 1024;
export const MAX_BUCKETS = 65536;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_FLOWS_PER_WORKER = 262_144;
/**
 * Most flow slots one worker may preallocate: 16 Mi slots are ~1.3 GiB of typed arrays per worker; far above that
 * the arrays cannot be allocated at all and the worker died at start with a bare V8 message.
 */
export const MAX_FLOWS_PER_WORKER = 16_777_216;
/** Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP). Larger datagrams cannot arrive over IPv4 and are dropped as oversize. */
export const MAX_DATAGRAM_BYTES = 65_507;
/** Largest UDP payload at all (IPv6 without jumbograms: 65535 - 8); the default --max-datagram. */
export const MAX_UDP_PAYLOAD_BYTES = 65_527;
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 5_000;
export const DEFAULT_REPORT_INTERVAL_MS = 100;
export const DEFAULT_REBALANCE_INTERVAL_MS = 250;
/** Workers within this fraction of their target share are left alone. */
export const DEFAULT_DEAD_BAND = 0.05;
/** Regular rounds move buckets only while some worker's event loop is busier than this (see balancer.ts). */
export const DEFAULT_MIN_BUSY = 0.5;
export const DEFAULT_MAX_MOVES_PER_ROUND = 16;
/** Packets queued in a worker beyond which it is overloaded and loses buckets at once. */
export const DEFAULT_QUEUE_LIMIT = 8192;
/** Packets one flow may have queued in a worker; beyond it the flow's new packets are dropped. */
export const DEFAULT_FLOW_QUEUE_LIMIT = 1024;
/** Deficit round robin quantum, in bytes. */
export const DEFAULT_QUANTUM_BYTES = 1500;
/** Packets held for a migrating bucket in the primary; beyond it they are dropped (reason hold_overflow). */
export const DEFAULT_HOLD_LIMIT = 4096;
/**
 * A migration whose old owner shows no progress for this long ends (a progressing one is given up to 4x, see
 * migrator.ts); a late answer is counted (migration_late) and its flow state imported where the new owner has
 * none. 2 s was measured too
 * short for a worker releasing ~1000 flows on a CPU-starved machine (1.7 s seen on a quiet one).
 */
export const DEFAULT_MIGRATION_TIMEOUT_MS = 5_000;
/**
 * A worker that has sent no load report for this long (stuck in its handler: an endless loop, a blocking call)
 * is killed and replaced like a crashed one; its buckets go to the others. "off" disables it.
 */
export const DEFAULT_STALL_TIMEOUT_MS = 10_000;
/** stallTimeout must cover at least this many report intervals (a healthy worker is never killed between two). */
export const STALL_REPORTS = 3;
/** Bytes buffered towards one worker's channel beyond which packets are dropped (reason channel_full). */
export const DEFAULT_CHANNEL_LIMIT_BYTES = 8 * 1024 * 1024;
export const DEFAULT_HANDLER = 'echo';
export const DEFAULT_BALANCE_MODE: BalanceMode = 'flow';
export const DEFAULT_LOG_LEVEL: LogLevel = 'info';
export const MAX_WORKERS = 256;
export const MAX_BACKEND_WEIGHT = 1000;
/** Largest count or byte limit accepted: counters and indexes live in 32-bit typed arrays. */
export const MAX_COUNT = 2 ** 31 - 1;
/** Longest duration accepted: Node's timers fire after 1 ms when given more than 2^31 - 1 ms. */
export const MAX_DURATION_MS = 2 ** 31 - 1;

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type BalanceMode = 'flow' | 'packet';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
}

export interface BackendSpec extends Endpoint {
  readonly weight: number;
}

export interface BalancerConfig {
  /** false: static hashing (buckets shared equally at start, moved only when a worker dies). */
  readonly enabled: boolean;
  readonly mode: BalanceMode;
  readonly reportIntervalMs: number;
  readonly rebalanceIntervalMs: number;
  readonly deadBand: number;
  /** Regular rounds plan moves only while the busiest live worker's ELU is above this (0 = always). */
  readonly minBusy: number;
  readonly maxMovesPerRound: number;
  readonly queueLimit: number;
  readonly holdLimit: number;
  readonly migrationTimeoutMs: number;
}

export interface QueueConfig {
  readonly quantumBytes: number;
  readonly flowQueueLimit: number;
}

export interface FlowlbConfig {
  readonly listen: readonly Endpoint[];
  readonly workers: number;
  readonly buckets: number;
  /** 'echo', 'proxy', 'sockperf', or an absolute path to a handler module. */
  readonly handler: string;
  readonly handlerOptions: Readonly<Record<string, unknown>>;
  readonly backends: readonly BackendSpec[];
  readonly idleTimeoutMs: number;
  /** Status/metrics HTTP listener; null disables it. */
  readonly http: Endpoint | null;
  readonly maxFlowsPerWorker: number;
  /** Datagrams larger than this are counted (reason oversize) and dropped by the primary. */
  readonly maxDatagramBytes: number;
  readonly channelLimitBytes: number;
  readonly shutdownTimeoutMs: number;
  /** A worker silent (no load report) this long is killed and replaced; 0 = never. */
  readonly stallTimeoutMs: number;
  readonly balancer: BalancerConfig;
  readonly queue: QueueConfig;
  readonly logLevel: LogLevel;
  /** Path of the config file it was loaded from (for SIGHUP reload), or null. */
  readonly configFile: string | null;
}

export function defaultWorkers(): number {
  return Math.max(1, os.availableParallelism());
}

// ---------------------------------------------------------------------------------------------------
// Parsing of the human forms (addresses, backends, durations). `what` names the field in error messages:
// `--listen` for a flag, `listen[1]` or `balancer.deadBand` for the config file.

/** Shows a rejected value in a message: strings quoted, other JSON shortened so the message stays one line. */
function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  // Flags arrive as strings; `got 1000` reads better than `got "1000"` and numbers need no quotes to be seen.
  if (typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value)) return value;
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function parsePort(portText: string, text: string, what: string, minPort: number): number {
  const port = /^\d{1,5}$/.test(portText) ? Number(portText) : NaN;
  if (!(port >= minPort && port <= 65535)) {
    throw new ConfigError(`${what} port must be an integer between ${minPort} and 65535, got ${show(portText)} in ${show(text)}`);
  }
  return port;
}

/**
 * Parses `HOST:PORT` (IPv4 literal or `localhost`, which means 127.0.0.1) or `[IPv6]:PORT`. Names are
 * not resolved: a load balancer that silently picked one of several DNS answers would be hard to debug.
 * `minPort` is 0 for listening addresses (0 = ephemeral) and 1 for destinations.
 */
/**
 * The one spelling of an IPv6 address (RFC 5952 as WHATWG URL writes it: lower case, zeros compressed), so
 * `[0:0:0:0:0:0:0:1]:53` and `[::1]:53` are one backend, one listener, one metric label. Zone ids are kept as given.
 */
export function canonicalIPv6(host: string): string {
  if (host.includes('%')) return host;
  try { return new URL(`http://[${host}]/`).hostname.slice(1, -1); } catch { return host; }
}

export function parseEndpoint(text: string, what: string, minPort = 0): Endpoint {
  if (typeof text !== 'string') throw new ConfigError(`${what} must be a HOST:PORT string, got ${show(text)}`);
  const trimmed = text.trim();
  let host: string;
  let portText: string;
  let family: 4 | 6;
  if (trimmed.startsWith('[')) {
    const close = trimmed.indexOf(']');
    if (close < 0 || trimmed[close + 1] !== ':') {
      throw new ConfigError(`${what} must be [IPv6]:PORT, got ${show(text)}`);
    }
    host = trimmed.slice(1, close);
    portText = trimmed.slice(close + 2);
    if (isIP(host) !== 6) throw new ConfigError(`${what} has an invalid IPv6 address ${show(host)} in ${show(text)}`);
    host = canonicalIPv6(host);
    family = 6;
  } else {
    const colon = trimmed.lastIndexOf(':');
    if (colon < 0) throw new ConfigError(`${what} must be HOST:PORT or [IPv6]:PORT, got ${show(text)}`);
    host = trimmed.slice(0, colon);
    portText = trimmed.slice(colon + 1);
    if (host.includes(':')) {
      throw new ConfigError(`${what} IPv6 addresses need brackets, as in [::1]:5300, got ${show(text)}`);
    }
    if (host.toLowerCase() === 'localhost') {
      host = '127.0.0.1';
    } else if (isIP(host) !== 4) {
      throw new ConfigError(
        `${what} host must be an IPv4 address, [IPv6 address] or localhost (names are not resolved), got ${show(text)}`,
      );
    }
    family = 4;
  }
  return { host, port: parsePort(portText, text, what, minPort), family };
}

function checkBackendHost(endpoint: Endpoint, text: string, what: string): void {
  if (endpoint.host === '0.0.0.0' || endpoint.host === '::') {
    throw new ConfigError(`${what} must name a host to send to, not the unspecified address, got ${show(text)}`);
  }
}

function readWeight(value: unknown, text: unknown, what: string): number {
  const weight = typeof value === 'number' ? value : /^\d+$/.test(String(value)) ? Number(value) : NaN;
  if (!(Number.isInteger(weight) && weight >= 1 && weight <= MAX_BACKEND_WEIGHT)) {
    throw new ConfigError(
      `${what} weight must be an integer between 1 and ${MAX_BACKEND_WEIGHT}, got ${show(value)} in ${show(text)}`,
    );
  }
  return weight;
}

/** Parses `HOST:PORT[@WEIGHT]`; the weight is a positive integer (default 1) giving the backend's share of flows. */
export function parseBackend(text: string, what = '--backend'): BackendSpec {
  if (typeof text !== 'string') throw new ConfigError(`${what} must be a HOST:PORT[@WEIGHT] string, got ${show(text)}`);
  const at = text.lastIndexOf('@');
  const address = at < 0 ? text : text.slice(0, at);
  const weight = at < 0 ? 1 : readWeight(text.slice(at + 1).trim(), text, what);
  const endpoint = parseEndpoint(address, what, 1);
  checkBackendHost(endpoint, text, what);
  return { ...endpoint, weight };
}

const DURATION_UNIT_MS: Readonly<Record<string, number>> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/**
 * True for a duration of zero in any spelling (0, "0", "0s", "0ms", "0.0h"): what options that a zero turns off accept.
 */
export function isZeroDuration(value: unknown): boolean {
  return value === 0 || (typeof value === 'string' && /^(0+(\.0*)?|\.0+)\s*(ms|s|m|h|d)?$/.test(value.trim()));
}

/** Parses `500ms`, `60s`, `5m`, `1h`, `1d`, `1.5s`, or a plain number of milliseconds; the result is whole ms, at least 1. */
export function parseDuration(value: string | number, what: string): number {
  let ms = NaN;
  if (typeof value === 'number') {
    ms = value;
  } else if (typeof value === 'string') {
    const match = /^(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?$/.exec(value.trim());
    if (match !== null) ms = Number(match[1]) * DURATION_UNIT_MS[match[2] ?? 'ms']!;
  }
  ms = Math.round(ms);
  if (!(ms >= 1 && ms <= MAX_DURATION_MS)) {
    throw new ConfigError(
      `${what} must be a positive duration such as 500ms, 60s, 5m or 1h (at most 24d), got ${show(value)}`,
    );
  }
  return ms;
}

/** The shortest exact form of a duration for --help and logs: 3600000 -> "1h", 60000 -> "60s", 200 -> "200ms". */
export function formatDuration(ms: number): string {
  if (ms % 86_400_000 === 0) return `${ms / 86_400_000}d`;
  if (ms % 3_600_000 === 0) return `${ms / 3_600_000}h`;
  if (ms % 60_000 === 0 && ms > 60_000) return `${ms / 60_000}m`;
  if (ms % 1000 === 0) return `${ms / 1000}s`;
  return `${ms}ms`;
}

export function formatEndpoint(endpoint: Endpoint): string {
  return endpoint.family === 6 ? `[${endpoint.host}]:${endpoint.port}` : `${endpoint.host}:${endpoint.port}`;
}

// ---------------------------------------------------------------------------------------------------
// Scalar readers shared by flags (strings from the command line) and the file (JSON values).

function toNumber(value: unknown): number {
  if (typeof value === 'number') return value;
  if (typeof value === 'string' && /^\s*-?(\d+(\.\d*)?|\.\d+)\s*$/.test(value)) return Number(value);
  return NaN;
}

function readInt(value: unknown, what: string, min: number, max: number): number {
  const n = toNumber(value);
  if (!(Number.isInteger(n) && n >= min && n <= max)) {
    const range = max === MAX_COUNT && min <= 1 ? 'a positive integer' : `an integer between ${min} and ${max}`;
    throw new ConfigError(`${what} must be ${range}, got ${show(value)}`);
  }
  return n;
}

function readCount(value: unknown, what: string): number {
  return readInt(value, what, 1, MAX_COUNT);
}

function readBuckets(value: unknown, what: string): number {
  const n = toNumber(value);
  // Power of two so the data path maps a hash to its bucket with one AND (hash & (buckets - 1)).
  if (!(Number.isInteger(n) && n >= 1 && n <= MAX_BUCKETS && (n & (n - 1)) === 0)) {
    throw new ConfigError(`${what} must be a power of two between 1 and ${MAX_BUCKETS}, got ${show(value)}`);
  }
  return n;
}

function readFraction(value: unknown, what: string): number {
  const n = toNumber(value);
  if (!(n >= 0 && n < 1)) throw new ConfigError(`${what} must be a number between 0 and 1, got ${show(value)}`);
  return n;
}

function readBoolean(value: unknown, what: string): boolean {
  if (value === true || value === 'true') return true;
  if (value === false || value === 'false') return false;
  throw new ConfigError(`${what} must be true or false, got ${show(value)}`);
}

function readChoice<T extends string>(value: unknown, what: string, choices: readonly T[]): T {
  if (typeof value === 'string' && (choices as readonly string[]).includes(value)) return value as T;
  throw new ConfigError(`${what} must be one of ${choices.join(', ')}, got ${show(value)}`);
}

function readDurationValue(value: unknown, what: string): number {
  if (typeof value !== 'string' && typeof value !== 'number') {
    // Not NaN in the message: name what the file holds (true, null, an object).
    throw new ConfigError(`${what} must be a positive duration such as 500ms, 60s, 5m or 1h (at most 24d), got ${show(value)}`);
  }
  return parseDuration(value, what);
}

function readHandlerName(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') {
    throw new ConfigError(`${what} must be echo, proxy, sockperf or the path of a handler module, got ${show(value)}`);
  }
  return value.trim();
}

function readHttp(value: unknown, what: string): Endpoint | null {
  if (value === false || value === null) return null;
  if (typeof value === 'string' && ['off', 'none', 'false'].includes(value.trim().toLowerCase())) return null;
  if (typeof value !== 'string') throw new ConfigError(`${what} must be HOST:PORT or off, got ${show(value)}`);
  return parseEndpoint(value, what);
}

/** Builds an endpoint from the file's object form `{ "host": "::1", "port": 7001 }` (IPv6 without brackets). */
function endpointFromObject(obj: Record<string, unknown>, what: string, minPort: number, extraKeys: readonly string[]): Endpoint {
  checkKnownFields(obj, what, ['host', 'port', ...extraKeys]);
  if (typeof obj.host !== 'string') throw new ConfigError(`${what}.host must be an IP address string, got ${show(obj.host)}`);
  const host = obj.host.trim().replace(/^\[(.*)\]$/, '$1');
  const text = isIP(host) === 6 ? `[${host}]:${String(obj.port)}` : `${host}:${String(obj.port)}`;
  if (typeof obj.port !== 'number') {
    throw new ConfigError(`${what}.port must be an integer between ${minPort} and 65535, got ${show(obj.port)}`);
  }
  return parseEndpoint(text, what, minPort);
}

function readListenList(value: unknown, what: string, fromFile: boolean): Endpoint[] {
  const items = Array.isArray(value) ? value : [value];
  if (items.length === 0) throw new ConfigError(`${what} must give at least one address`);
  const seen = new Set<string>();
  return items.map((item, i) => {
    const itemWhat = fromFile && Array.isArray(value) ? `${what}[${i}]` : what;
    const endpoint = fromFile && isPlainObject(item) ? endpointFromObject(item, itemWhat, 0, []) : parseEndpoint(item as string, itemWhat);
    const key = formatEndpoint(endpoint);
    // Port 0 asks the kernel for a fresh port each time, so repeating it is not a duplicate.
    if (endpoint.port !== 0 && seen.has(key)) throw new ConfigError(`${itemWhat} ${key} is given twice`);
    seen.add(key);
    return endpoint;
  });
}

function readBackendList(value: unknown, what: string, fromFile: boolean): BackendSpec[] {
  const items = Array.isArray(value) ? value : [value];
  const seen = new Set<string>();
  return items.map((item, i) => {
    const itemWhat = fromFile && Array.isArray(value) ? `${what}[${i}]` : what;
    let backend: BackendSpec;
    if (fromFile && isPlainObject(item)) {
      const endpoint = endpointFromObject(item, itemWhat, 1, ['weight']);
      checkBackendHost(endpoint, formatEndpoint(endpoint), itemWhat);
      backend = { ...endpoint, weight: item.weight === undefined ? 1 : readWeight(item.weight, item, itemWhat) };
    } else {
      backend = parseBackend(item as string, itemWhat);
    }
    const key = formatEndpoint(backend);
    if (seen.has(key)) throw new ConfigError(`${itemWhat} ${key} is given twice (use @WEIGHT to give it a larger share)`);
    seen.add(key);
    return backend;
  });
}

function readHandlerOptions(value: unknown, what: string): Record<string, unknown> {
  if (!isPlainObject(value)) throw new ConfigError(`${what} must be an object, got ${show(value)}`);
  // Handler options travel to every worker over IPC, so they must be plain JSON data.
  try {
    return JSON.parse(JSON.stringify(value)) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(`${what} must be plain JSON data (${(err as Error).message})`);
  }
}

function checkKnownFields(obj: Record<string, unknown>, what: string, known: readonly string[]): void {
  for (const key of Object.keys(obj)) {
    if (!known.includes(key)) {
      const name = what === '' ? key : `${what}.${key}`;
      throw new ConfigError(`unknown field ${name} (known: ${known.join(', ')})`);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Building: defaults <- config file <- flags, into a mutable draft, then checked as a whole and frozen.

type Mutable<T> = { -readonly [K in keyof T]: T[K] };

interface ConfigDraft extends Mutable<Omit<FlowlbConfig, 'balancer' | 'queue' | 'listen' | 'backends'>> {
  listen: Endpoint[];
  backends: BackendSpec[];
  balancer: Mutable<BalancerConfig>;
  queue: Mutable<QueueConfig>;
  /** Where the handler value came from, for the "file not found" message. */
  handlerWhat: string;
  /** A relative handler path from a config file is relative to the file's directory; from a flag, to cwd (null). */
  handlerDir: string | null;
}

function createDraft(): ConfigDraft {
  return {
    listen: [parseEndpoint(DEFAULT_LISTEN, 'DEFAULT_LISTEN')],
    workers: defaultWorkers(),
    buckets: DEFAULT_BUCKETS,
    handler: DEFAULT_HANDLER,
    handlerWhat: 'handler',
    handlerDir: null,
    handlerOptions: {},
    backends: [],
    idleTimeoutMs: DEFAULT_IDLE_TIMEOUT_MS,
    http: parseEndpoint(DEFAULT_HTTP, 'DEFAULT_HTTP'),
    maxFlowsPerWorker: DEFAULT_MAX_FLOWS_PER_WORKER,
    maxDatagramBytes: MAX_UDP_PAYLOAD_BYTES,
    channelLimitBytes: DEFAULT_CHANNEL_LIMIT_BYTES,
    shutdownTimeoutMs: DEFAULT_SHUTDOWN_TIMEOUT_MS,
    stallTimeoutMs: DEFAULT_STALL_TIMEOUT_MS,
    balancer: {
      enabled: true,
      mode: DEFAULT_BALANCE_MODE,
      reportIntervalMs: DEFAULT_REPORT_INTERVAL_MS,
      rebalanceIntervalMs: DEFAULT_REBALANCE_INTERVAL_MS,
      deadBand: DEFAULT_DEAD_BAND,
      minBusy: DEFAULT_MIN_BUSY,
      maxMovesPerRound: DEFAULT_MAX_MOVES_PER_ROUND,
      queueLimit: DEFAULT_QUEUE_LIMIT,
      holdLimit: DEFAULT_HOLD_LIMIT,
      migrationTimeoutMs: DEFAULT_MIGRATION_TIMEOUT_MS,
    },
    queue: { quantumBytes: DEFAULT_QUANTUM_BYTES, flowQueueLimit: DEFAULT_FLOW_QUEUE_LIMIT },
    logLevel: DEFAULT_LOG_LEVEL,
    configFile: null,
  };
}

const LOG_LEVEL_CHOICES: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];
const MODE_CHOICES: readonly BalanceMode[] = ['flow', 'packet'];

type FieldReader<T> = (target: T, value: unknown, what: string) => void;

/**
 * Fields whose value is a duration in ms accept both `nameMs` (a number of ms or a duration string) and
 * `name` (a duration string such as "60s"); giving both is an error. With `offAllowed`, "off" gives 0.
 */
function durationFields<T>(name: string, assign: (target: T, ms: number) => void, offAllowed = false): Record<string, FieldReader<T>> {
  const reader: FieldReader<T> = (target, value, what) => assign(target, offAllowed && value === 'off' ? 0 : readDurationValue(value, what));
  return { [name]: reader, [`${name}Ms`]: reader };
}

const BALANCER_FIELDS: Readonly<Record<string, FieldReader<Mutable<BalancerConfig>>>> = {
  enabled: (b, v, w) => (b.enabled = readBoolean(v, w)),
  mode: (b, v, w) => (b.mode = readChoice(v, w, MODE_CHOICES)),
  ...durationFields('reportInterval', (b, ms) => (b.reportIntervalMs = ms)),
  ...durationFields('rebalanceInterval', (b, ms) => (b.rebalanceIntervalMs = ms)),
  deadBand: (b, v, w) => (b.deadBand = readFraction(v, w)),
  minBusy: (b, v, w) => (b.minBusy = readFraction(v, w)),
  maxMovesPerRound: (b, v, w) => (b.maxMovesPerRound = readCount(v, w)),
  queueLimit: (b, v, w) => (b.queueLimit = readCount(v, w)),
  holdLimit: (b, v, w) => (b.holdLimit = readCount(v, w)),
  ...durationFields('migrationTimeout', (b, ms) => (b.migrationTimeoutMs = ms)),
};

const QUEUE_FIELDS: Readonly<Record<string, FieldReader<Mutable<QueueConfig>>>> = {
  quantumBytes: (q, v, w) => (q.quantumBytes = readCount(v, w)),
  flowQueueLimit: (q, v, w) => (q.flowQueueLimit = readCount(v, w)),
};

function applyObject<T>(target: T, obj: unknown, what: string, fields: Readonly<Record<string, FieldReader<T>>>): void {
  if (!isPlainObject(obj)) throw new ConfigError(`${what || 'config'} must be a JSON object, got ${show(obj)}`);
  const known = Object.keys(fields);
  checkKnownFields(obj, what, known);
  for (const key of known) {
    if (key.endsWith('Ms') && obj[key] !== undefined && obj[key.slice(0, -2)] !== undefined) {
      const prefix = what === '' ? '' : `${what}.`;
      throw new ConfigError(`${prefix}${key.slice(0, -2)} and ${prefix}${key} are both given; keep one`);
    }
  }
  for (const [key, value] of Object.entries(obj)) {
    fields[key]!(target, value, what === '' ? key : `${what}.${key}`);
  }
}

const FILE_FIELDS: Readonly<Record<string, FieldReader<ConfigDraft>>> = {
  listen: (d, v, w) => (d.listen = readListenList(v, w, true)),
  workers: (d, v, w) => (d.workers = readInt(v, w, 1, MAX_WORKERS)),
  buckets: (d, v, w) => (d.buckets = readBuckets(v, w)),
  handler: (d, v, w) => {
    d.handler = readHandlerName(v, w);
    d.handlerWhat = w;
  },
  handlerOptions: (d, v, w) => (d.handlerOptions = readHandlerOptions(v, w)),
  backends: (d, v, w) => (d.backends = readBackendList(v, w, true)),
  ...durationFields<ConfigDraft>('idleTimeout', (d, ms) => (d.idleTimeoutMs = ms)),
  http: (d, v, w) => (d.http = readHttp(v, w)),
  maxFlowsPerWorker: (d, v, w) => (d.maxFlowsPerWorker = readInt(v, w, 1, MAX_FLOWS_PER_WORKER)),
  maxDatagramBytes: (d, v, w) => (d.maxDatagramBytes = readInt(v, w, 1, MAX_UDP_PAYLOAD_BYTES)),
  // Below one largest datagram a worker's channel could never take a full-size packet.
  channelLimitBytes: (d, v, w) => (d.channelLimitBytes = readInt(v, w, MAX_DATAGRAM_BYTES, MAX_COUNT)),
  ...durationFields<ConfigDraft>('shutdownTimeout', (d, ms) => (d.shutdownTimeoutMs = ms)),
  ...durationFields<ConfigDraft>('stallTimeout', (d, ms) => (d.stallTimeoutMs = ms), true),
  balancer: (d, v, w) => applyObject(d.balancer, v, w, BALANCER_FIELDS),
  queue: (d, v, w) => applyObject(d.queue, v, w, QUEUE_FIELDS),
  logLevel: (d, v, w) => (d.logLevel = readChoice(v, w, LOG_LEVEL_CHOICES)),
};

function applyFileObject(draft: ConfigDraft, raw: unknown, source: string, configFile: string | null = null): void {
  try {
    applyObject(draft, raw, '', FILE_FIELDS);
  } catch (err) {
    if (err instanceof ConfigError && source !== '') throw new ConfigError(`${source}: ${err.message}`);
    throw err;
  }
  // The handler file is checked once the flags are in (a --handler flag may replace it); keep its origin.
  if (source !== '' && isPlainObject(raw) && raw.handler !== undefined) draft.handlerWhat = `${source}: handler`;
  if (configFile !== null && isPlainObject(raw) && raw.handler !== undefined) draft.handlerDir = path.dirname(configFile);
}

/** A flag as yargs hands it over: a string, an array when repeated, a boolean for --no-NAME. */
export type FlagValue = string | number | boolean | readonly (string | number | boolean)[];

/** The `serve` flags (camelCase, as yargs gives them). Absent flags leave the file's or the default value. */
export interface ServeFlags {
  readonly listen?: FlagValue;
  readonly workers?: FlagValue;
  readonly buckets?: FlagValue;
  readonly handler?: FlagValue;
  readonly backend?: FlagValue;
  readonly idleTimeout?: FlagValue;
  readonly config?: FlagValue;
  readonly http?: FlagValue;
  readonly maxFlows?: FlagValue;
  readonly maxDatagram?: FlagValue;
  readonly mode?: FlagValue;
  /** false from --no-balance: static hashing. */
  readonly balance?: FlagValue;
  readonly queueLimit?: FlagValue;
  readonly reportInterval?: FlagValue;
  readonly rebalanceInterval?: FlagValue;
  readonly logLevel?: FlagValue;
}

/** A repeated single-valued flag keeps its last value, as most command lines do. */
function lastValue(value: FlagValue): unknown {
  return Array.isArray(value) ? value[value.length - 1] : value;
}

const FLAG_FIELDS: Readonly<Record<keyof ServeFlags, FieldReader<ConfigDraft> | null>> = {
  listen: (d, v, w) => (d.listen = readListenList(v, w, false)),
  workers: (d, v, w) => (d.workers = readInt(lastValue(v as FlagValue), w, 1, MAX_WORKERS)),
  buckets: (d, v, w) => (d.buckets = readBuckets(lastValue(v as FlagValue), w)),
  handler: (d, v, w) => {
    d.handler = readHandlerName(lastValue(v as FlagValue), w);
    d.handlerWhat = w;
    d.handlerDir = null;
  },
  backend: (d, v, w) => (d.backends = readBackendList(v, w, false)),
  idleTimeout: (d, v, w) => (d.idleTimeoutMs = readDurationValue(lastValue(v as FlagValue), w)),
  config: null,
  http: (d, v, w) => (d.http = readHttp(lastValue(v as FlagValue), w)),
  maxFlows: (d, v, w) => (d.maxFlowsPerWorker = readInt(lastValue(v as FlagValue), w, 1, MAX_FLOWS_PER_WORKER)),
  maxDatagram: (d, v, w) => (d.maxDatagramBytes = readInt(lastValue(v as FlagValue), w, 1, MAX_UDP_PAYLOAD_BYTES)),
  mode: (d, v, w) => (d.balancer.mode = readChoice(lastValue(v as FlagValue), w, MODE_CHOICES)),
  balance: (d, v, w) => (d.balancer.enabled = readBoolean(lastValue(v as FlagValue), w)),
  queueLimit: (d, v, w) => (d.balancer.queueLimit = readCount(lastValue(v as FlagValue), w)),
  reportInterval: (d, v, w) => (d.balancer.reportIntervalMs = readDurationValue(lastValue(v as FlagValue), w)),
  rebalanceInterval: (d, v, w) => (d.balancer.rebalanceIntervalMs = readDurationValue(lastValue(v as FlagValue), w)),
  logLevel: (d, v, w) => (d.logLevel = readChoice(lastValue(v as FlagValue), w, LOG_LEVEL_CHOICES)),
};

function flagName(key: string): string {
  return `--${key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)}`;
}

function applyFlags(draft: ConfigDraft, flags: ServeFlags): void {
  for (const [key, reader] of Object.entries(FLAG_FIELDS)) {
    const value = flags[key as keyof ServeFlags];
    if (reader === null || value === undefined) continue;
    reader(draft, value, key === 'balance' ? '--balance' : flagName(key));
  }
}

function resolveHandler(handler: string, what: string, cwd: string): string {
  if (handler === 'echo' || handler === 'proxy' || handler === 'sockperf') return handler;
  const file = path.resolve(cwd, handler);
  let isFile: boolean;
  try {
    isFile = statSync(file).isFile();
  } catch {
    throw new ConfigError(`${what} ${show(handler)}: no such file ${file} (expected echo, proxy, sockperf or a module path)`);
  }
  if (!isFile) throw new ConfigError(`${what} ${show(handler)}: ${file} is not a file`);
  return file;
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

/**
 * Checks that need the whole config (a value can come from the file and another from a flag), then
 * freezes it. `source` prefixes messages that cannot say which input was at fault ("" when mixed).
 */
function finishConfig(draft: ConfigDraft, configFile: string | null, cwd: string, source: string): FlowlbConfig {
  const handler = resolveHandler(draft.handler, draft.handlerWhat, draft.handlerDir ?? cwd);
  if (handler === 'proxy' && draft.backends.length === 0) {
    throw new ConfigError(
      `${draft.handlerWhat} proxy needs at least one backend (--backend HOST:PORT or "backends" in the config file)`,
    );
  }
  if (draft.buckets < draft.workers) {
    const prefix = source === '' ? '' : `${source}: `;
    throw new ConfigError(
      `${prefix}buckets (${draft.buckets}) must be at least the number of workers (${draft.workers}): a worker without buckets gets no traffic`,
    );
  }
  if (draft.stallTimeoutMs > 0 && draft.balancer.reportIntervalMs * STALL_REPORTS > draft.stallTimeoutMs) {
    const prefix = source === '' ? '' : `${source}: `;
    throw new ConfigError(
      `${prefix}reportInterval (${formatDuration(draft.balancer.reportIntervalMs)}, --report-interval) must be at most 1/${STALL_REPORTS} of ` +
      `stallTimeout (${formatDuration(draft.stallTimeoutMs)}): a worker without a report for stallTimeout is killed as stuck; ` +
      'shorten the interval, or raise stallTimeout (or set it to "off")',
    );
  }
  const config: FlowlbConfig = {
    listen: draft.listen,
    workers: draft.workers,
    buckets: draft.buckets,
    handler,
    handlerOptions: draft.handlerOptions,
    backends: draft.backends,
    idleTimeoutMs: draft.idleTimeoutMs,
    http: draft.http,
    maxFlowsPerWorker: draft.maxFlowsPerWorker,
    maxDatagramBytes: draft.maxDatagramBytes,
    channelLimitBytes: draft.channelLimitBytes,
    shutdownTimeoutMs: draft.shutdownTimeoutMs,
    stallTimeoutMs: draft.stallTimeoutMs,
    balancer: { ...draft.balancer },
    queue: { ...draft.queue },
    logLevel: draft.logLevel,
    configFile,
  };
  return deepFreeze(config);
}

/** The configuration with every default, as `flowlb serve` with no flags would run. */
export function defaultConfig(): FlowlbConfig {
  return finishConfig(createDraft(), null, process.cwd(), '');
}

/**
 * Validates a config-file object (already parsed from JSON) over the defaults and returns the frozen
 * config. `source` prefixes error messages (e.g. "config file /etc/flowlb.json"; "" for none). Throws
 * ConfigError naming the first bad field.
 */
export function validateConfigObject(
  raw: unknown,
  source: string,
  configFile: string | null = null,
  cwd: string = process.cwd(),
): FlowlbConfig {
  const draft = createDraft();
  applyFileObject(draft, raw, source, configFile);
  return finishConfig(draft, configFile, cwd, source);
}

/** Node's JSON.parse reports "at position N"; people edit files by line and column. */
function describeJsonError(text: string, err: Error): string {
  const message = err.message.replace(/\s+/g, ' ');
  const match = /at position (\d+)/.exec(message);
  if (match === null) return message;
  const before = text.slice(0, Number(match[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return `${message} (line ${line} column ${column})`;
}

/** Reads and parses a JSON config file; errors name the file. */
export async function readConfigFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const reason = code === 'ENOENT' ? 'not found' : code === 'EISDIR' ? 'is a directory' : `cannot be read (${code ?? (err as Error).message})`;
    throw new ConfigError(`config file ${file}: ${reason}`);
  }
  // Editors on Windows save UTF-8 with a byte order mark; JSON.parse rejects it ("Unexpected token").
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new ConfigError(`config file ${file}: invalid JSON: ${describeJsonError(text, err as Error)}`);
  }
}

/** The flags and directory each resolved config was built from, so a SIGHUP reload can apply them again. */
const RESOLVE_INPUTS = new WeakMap<FlowlbConfig, { readonly flags: ServeFlags; readonly cwd: string }>();

/**
 * Builds the config for `flowlb serve`: defaults, then the JSON file named by `--config` (relative paths
 * from `cwd`), then the flags. Throws ConfigError naming the flag or the file and field at fault.
 */
export async function resolveConfig(flags: ServeFlags, cwd: string = process.cwd()): Promise<FlowlbConfig> {
  const draft = createDraft();
  let configFile: string | null = null;
  if (flags.config !== undefined) {
    const name = lastValue(flags.config);
    if (typeof name !== 'string' || name === '') throw new ConfigError(`--config must be a file path, got ${show(name)}`);
    configFile = path.resolve(cwd, name);
    applyFileObject(draft, await readConfigFile(configFile), `config file ${configFile}`, configFile);
  }
  applyFlags(draft, flags);
  const config = finishConfig(draft, configFile, cwd, '');
  RESOLVE_INPUTS.set(config, { flags: { ...flags }, cwd });
  return config;
}

/**
 * SIGHUP: re-reads `current.configFile` and applies the same flags as at start (flags still win), giving
 * a new frozen config or a ConfigError (the caller keeps running on `current`). Which changes can be
 * applied live (backends, handler options, balancer tuning) is the caller's decision.
 */
export async function reloadConfig(current: FlowlbConfig): Promise<FlowlbConfig> {
  if (current.configFile === null) throw new ConfigError('no config file to reload (start with --config FILE)');
  // A config that crossed IPC is a copy and not in the map; then only the file is re-read.
  const inputs = RESOLVE_INPUTS.get(current) ?? { flags: {}, cwd: process.cwd() };
  return resolveConfig({ ...inputs.flags, config: current.configFile }, inputs.cwd);
}
