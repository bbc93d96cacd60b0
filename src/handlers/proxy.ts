/**
 * The built-in `proxy` handler: a UDP proxy in the manner of nginx `stream` / Envoy's udp_proxy. Each flow gets
 * its own upstream socket, connected to one backend, so the backend sees one stable source port per client and
 * its answers come back on that socket and are relayed to the client from flowlb's listening address.
 *
 * Backend choice is weighted Maglev over the flow's 4-tuple hash, so every worker picks the same backend for a
 * flow; when a flow's bucket migrates, exportFlow hands the upstream socket itself to the new worker, so the
 * backend keeps seeing the same source address and port.
 *
 * Per packet the handler does one state check and one `send` on a connected socket: no lookup, no closure (the
 * socket callbacks are module-level functions that find their session through the socket).
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { isZeroDuration, parseDuration } from '../config.js';
import { ConfigError } from '../errors.js';
import { buildMaglevTable, lookupMaglev } from './maglev.js';
import type { ExportedFlow, Flow, FlowEndReason, FlowHandler, HandlerContext } from './types.js';

/** Datagrams one flow may queue while its upstream socket connects (one DNS lookup or one tick for an IP literal). */
export const DEFAULT_PRECONNECT_QUEUE_PACKETS = 64;
export const MAX_PRECONNECT_QUEUE_PACKETS = 65_536;
/** After a failed connect (DNS lookup or connect(2)), packets are dropped for this long, then the next one retries. */
export const RECONNECT_DELAY_MS = 1_000;

/**
 * Passive health, as nginx's `max_fails` / `fail_timeout`: a backend that fails `maxFails` times within
 * `failTimeout` (ICMP port unreachable, or a failed connect) is taken out of this worker's table for `failTimeout`.
 */
export const DEFAULT_MAX_FAILS = 1;
export const DEFAULT_FAIL_TIMEOUT_MS = 10_000;
const MAX_MAX_FAILS = 1_000_000;
/**
 * Silence as a failure (`responseTimeout`, off by default): a backend that has sent nothing back for this long
 * while datagrams went to it counts one failure. Judged per backend over all of a worker's flows, from the request
 * and response counters, by a timer that looks every eighth of the timeout: nothing is added per packet.
 */
export const DEFAULT_RESPONSE_TIMEOUT_MS = 0;
/**
 * Silence checks per responseTimeout. The clock starts at the first check that sees no answer since the one before,
 * up to two checks after the first unanswered datagram (the check in between may still see the last answers):
 * noticed 1 to 1 + 2/SILENCE_CHECKS timeouts after it. With 4, 1.25-1.5 was measured under steady traffic.
 */
const SILENCE_CHECKS = 8;

const INITIAL_BACKEND_SLOTS = 8;

/**
 * Connect failures that say nothing about the backend: this process ran out of descriptors, buffers or memory
 * (counted, but no reason to take a backend out: with a descriptor limit reached under flow churn, both healthy
 * backends of a proxy were marked down and established flows hopped between them).
 */
const LOCAL_ERRNOS: ReadonlySet<string> = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

/**
 * The proxy's counters. Per-backend counters are Float64Arrays indexed by `backendIndex(key)`; the index of a
 * backend key never changes for the life of the handler (a reload only appends keys), so every counter is
 * monotonic and a scrape can read `backendKeys[i]` with `requests[i]` etc. Arrays are replaced when they grow:
 * read them through this object at scrape time, do not keep references.
 */
export class ProxyStats {
  /** Backend keys ("host:port", "[v6]:port"), append-only. */
  readonly backendKeys: string[] = [];
  /** Datagrams handed to the kernel for the backend (sent, or queued by libuv if the socket buffer is full). */
  requests = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Datagrams received from the backend on a flow's upstream socket and relayed to the client. */
  responses = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Sends towards the backend that failed, other than ECONNREFUSED. */
  sendErrors = new Float64Array(INITIAL_BACKEND_SLOTS);
  /**
   * ECONNREFUSED on an upstream socket: the backend host answered with ICMP port unreachable (nothing listens on
   * the port). Linux reports it on the connected socket's next receive or send. The socket stays usable.
   */
  refused = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Other errors an upstream socket reported (receive failures). */
  socketErrors = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Upstream connects that failed (DNS lookup or connect(2)); the flow's queued packets count in droppedConnectFailed. */
  connectErrors = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Upstream sockets flowlb could not open for lack of descriptors, buffers or memory (LOCAL_ERRNOS); not the backend's fault. */
  localErrors = new Float64Array(INITIAL_BACKEND_SLOTS);
  /**
   * Times the backend answered nothing for `responseTimeout` while datagrams went to it (a silent backend: no
   * ICMP, no answer). Each counts as one failure towards maxFails.
   */
  timeouts = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Health-check probes (handlerOptions.healthCheck) answered as expected, and failed (no answer in time, refused). */
  probeOk = new Float64Array(INITIAL_BACKEND_SLOTS);
  probeFailed = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** Times passive health took the backend out of the table (maxFails failures within failTimeout). */
  markedDown = new Float64Array(INITIAL_BACKEND_SLOTS);
  /** 1 while the backend is out of the table, else 0 (a gauge). */
  down = new Float64Array(INITIAL_BACKEND_SLOTS);

  /** Client datagrams dropped because no backend has a positive weight. */
  droppedNoBackend = 0;
  /** Client datagrams dropped because the flow's pre-connect queue was full. */
  droppedQueueFull = 0;
  /** Client datagrams dropped because the flow's upstream connect failed (queued ones, and those in the retry delay). */
  droppedConnectFailed = 0;
  /** Client datagrams still queued for a connecting upstream when the flow was exported to another worker. */
  droppedMigrating = 0;
  /** Imported flows whose upstream socket could not be adopted, so a new one (new source port) was opened. */
  adoptFailures = 0;
  /** Upstream sockets currently open in this handler (one per flow with a backend). */
  activeUpstreams = 0;

  private readonly indexByKey = new Map<string, number>();

  /** The stable index of a backend key in the per-backend arrays, assigned on first use. */
  backendIndex(key: string): number {
    const known = this.indexByKey.get(key);
    if (known !== undefined) return known;
    const index = this.backendKeys.length;
    this.backendKeys.push(key);
    this.indexByKey.set(key, index);
    if (index >= this.requests.length) {
      const size = this.requests.length * 2;
      this.requests = grow(this.requests, size);
      this.responses = grow(this.responses, size);
      this.sendErrors = grow(this.sendErrors, size);
      this.refused = grow(this.refused, size);
      this.socketErrors = grow(this.socketErrors, size);
      this.connectErrors = grow(this.connectErrors, size);
      this.localErrors = grow(this.localErrors, size);
      this.timeouts = grow(this.timeouts, size);
      this.probeOk = grow(this.probeOk, size);
      this.probeFailed = grow(this.probeFailed, size);
      this.markedDown = grow(this.markedDown, size);
      this.down = grow(this.down, size);
    }
    return index;
  }
}

function grow(old: Float64Array, size: number): Float64Array<ArrayBuffer> {
  const next = new Float64Array(size);
  next.set(old);
  return next;
}

/** What exportFlow puts in `ExportedFlow.data`. */
export interface ProxyFlowData {
  /** Key of the flow's backend, or null if it had none. */
  readonly backendKey: string | null;
}

/** The key a backend is known by in the Maglev table, the counters and exported flows. */
export function backendKey(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

interface ProxyBackend {
  readonly key: string;
  readonly host: string;
  readonly port: number;
  readonly weight: number;
  readonly socketType: 'udp4' | 'udp6';
  /** Index in the ProxyStats arrays. */
  readonly stat: number;
}

// Session states. Integers, as in Node's dgram (BIND_STATE_*).
const UPSTREAM_NONE = 0; // no backend with a positive weight
const UPSTREAM_CONNECTING = 1;
const UPSTREAM_CONNECTED = 2;
const UPSTREAM_FAILED = 3; // connect failed; retried by a packet after RECONNECT_DELAY_MS
const UPSTREAM_CLOSED = 4; // flow ended or exported

const kSession = Symbol('flowlb.proxy.session');
type UpstreamSocket = dgram.Socket & { [kSession]?: UpstreamSession };

/** One flow's binding to its backend: lives in `flow.state`. */
class UpstreamSession {
  flow: Flow;
  readonly handler: ProxyHandler;
  backend: ProxyBackend | null = null;
  socket: UpstreamSocket | null = null;
  state = UPSTREAM_NONE;
  /** Copies of client datagrams waiting for the connect (the originals are views into a batch buffer). */
  pending: Buffer[] = [];
  /** Set by reconfigure when the backend was removed (or there was none): the next packet picks again. */
  stale = false;
  failedAtMs = 0;
  /**
   * The send callback, bound once per flow: Node calls send callbacks with `this` set to its internal request,
   * so this is the one way to count a failed send against its backend without a closure per packet.
   */
  readonly onSent: (err: Error | null) => void;

  constructor(handler: ProxyHandler, flow: Flow) {
    this.handler = handler;
    this.flow = flow;
    this.onSent = onUpstreamSent.bind(this);
  }

  /** Opens a new upstream socket to `backend` (or records that there is none). */
  open(backend: ProxyBackend | null): void {
    this.backend = backend;
    if (backend === null) {
      this.state = UPSTREAM_NONE;
      return;
    }
    // connect() binds first with { port: 0, exclusive: true }: in a cluster worker a non-exclusive bind would
    // share the primary's handle instead of getting a port of its own.
    const socket: UpstreamSocket = dgram.createSocket(backend.socketType);
    this.attach(socket);
    this.state = UPSTREAM_CONNECTING;
    socket.once('connect', onUpstreamConnect);
    socket.connect(backend.port, backend.host);
  }

  attach(socket: UpstreamSocket): void {
    socket[kSession] = this;
    socket.on('message', onUpstreamMessage);
    socket.on('error', onUpstreamError);
    this.socket = socket;
    this.handler.stats.activeUpstreams++;
  }

  /** Sends queued datagrams once connected. */
  flush(): void {
    const socket = this.socket!;
    const stats = this.handler.stats;
    const stat = this.backend!.stat;
    for (const payload of this.pending) {
      stats.requests[stat]++;
      socket.send(payload, this.onSent);
    }
    this.pending.length = 0;
  }

  /** Closes the upstream socket (if any) and drops what was queued for it, counted under `dropped`. */
  closeSocket(): number {
    const dropped = this.pending.length;
    this.pending.length = 0;
    const socket = this.socket;
    if (socket !== null) {
      this.socket = null;
      socket[kSession] = undefined;
      socket.close();
      this.handler.stats.activeUpstreams--;
    }
    return dropped;
  }
}

function onUpstreamSent(this: UpstreamSession, err: Error | null): void {
  if (!err) return;
  const backend = this.backend;
  if (backend === null) return;
  if ((err as NodeJS.ErrnoException).code === 'ECONNREFUSED') {
    this.handler.stats.refused[backend.stat]++;
    this.handler.backendFailed(backend, 'refused');
  } else {
    this.handler.stats.sendErrors[backend.stat]++;
  }
}

function onUpstreamConnect(this: UpstreamSocket): void {
  const session = this[kSession];
  if (session === undefined || session.state !== UPSTREAM_CONNECTING) return;
  session.state = UPSTREAM_CONNECTED;
  session.flush();
}

function onUpstreamMessage(this: UpstreamSocket, msg: Buffer): void {
  const session = this[kSession];
  if (session === undefined) return;
  session.handler.stats.responses[session.backend!.stat]++;
  session.flow.reply(msg);
}

function onUpstreamError(this: UpstreamSocket, err: NodeJS.ErrnoException): void {
  const session = this[kSession];
  if (session === undefined || session.backend === null) return;
  const stats = session.handler.stats;
  const stat = session.backend.stat;
  if (session.state === UPSTREAM_CONNECTING) {
    // Only the connect (its DNS lookup or connect(2)) can fail before the socket is connected.
    const local = LOCAL_ERRNOS.has(err.code ?? '');
    if (local) stats.localErrors[stat]++;
    else stats.connectErrors[stat]++;
    stats.droppedConnectFailed += session.closeSocket();
    session.state = UPSTREAM_FAILED;
    session.failedAtMs = Date.now();
    if (!local) session.handler.backendFailed(session.backend, 'connect failed');
  } else if (err.code === 'ECONNREFUSED') {
    stats.refused[stat]++;
    session.handler.backendFailed(session.backend, 'refused');
  } else {
    stats.socketErrors[stat]++;
  }
}

/**
 * Listener left on an exported socket while its handle is in transit: an 'error' event without a listener
 * would crash the worker, and an ICMP error can still arrive until the sender closes its copy.
 */
function ignoreUpstreamError(): void {}

/**
 * A socket whose handle came over IPC is connected in the kernel (libuv's uv_udp_open notices and marks the
 * handle connected, so connect() fails with EISCONN) but Node's JavaScript state says "disconnected", so a send
 * without an address throws. Node has no public way to adopt a connected handle, so this sets the state Node
 * would have set after connect(), then checks with remoteAddress() (getpeername) that the kernel agrees.
 * Returns false, leaving the socket as it was, if Node's internals differ or the peer is not `backend`.
 */
function adoptConnectedHandle(socket: dgram.Socket, backend: ProxyBackend): boolean {
  const stateSymbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
  if (stateSymbol === undefined) return false;
  const state = (socket as unknown as Record<symbol, { connectState?: unknown; handle?: unknown }>)[stateSymbol];
  if (state === undefined || state.connectState !== NODE_CONNECT_STATE_DISCONNECTED || !state.handle) return false;
  state.connectState = NODE_CONNECT_STATE_CONNECTED;
  try {
    if (socket.remoteAddress().port === backend.port) return true;
  } catch {
    // getpeername failed: not connected in the kernel either.
  }
  state.connectState = NODE_CONNECT_STATE_DISCONNECTED;
  return false;
}

// lib/dgram.js CONNECT_STATE_DISCONNECTED and CONNECT_STATE_CONNECTED (Node 20 and 22).
const NODE_CONNECT_STATE_DISCONNECTED = 0;
const NODE_CONNECT_STATE_CONNECTED = 2;

function isJsConnected(socket: dgram.Socket): boolean {
  try {
    socket.remoteAddress();
    return true;
  } catch {
    return false;
  }
}

interface HealthOptions {
  readonly maxFails: number;
  readonly failTimeoutMs: number;
  /** 0: off. */
  readonly responseTimeoutMs: number;
}

function readHealthOptions(options: Readonly<Record<string, unknown>>): HealthOptions {
  const maxFails = options.maxFails ?? DEFAULT_MAX_FAILS;
  if (typeof maxFails !== 'number' || !Number.isInteger(maxFails) || maxFails < 0 || maxFails > MAX_MAX_FAILS) {
    throw new ConfigError(`handlerOptions.maxFails must be an integer from 0 (never mark a backend down) to ${MAX_MAX_FAILS}, got ${JSON.stringify(maxFails)}`);
  }
  const failTimeout = options.failTimeout ?? DEFAULT_FAIL_TIMEOUT_MS;
  if (typeof failTimeout !== 'string' && typeof failTimeout !== 'number') {
    throw new ConfigError(`handlerOptions.failTimeout must be a positive duration such as 500ms, 10s or 1m, got ${JSON.stringify(failTimeout)}`);
  }
  const responseTimeout = options.responseTimeout ?? DEFAULT_RESPONSE_TIMEOUT_MS;
  if ((typeof responseTimeout !== 'string' && typeof responseTimeout !== 'number') || (!isZeroDuration(responseTimeout) && !isDuration(responseTimeout))) {
    throw new ConfigError(`handlerOptions.responseTimeout must be 0 (off) or a duration such as 500ms or 2s, got ${JSON.stringify(responseTimeout)}`);
  }
  return {
    maxFails,
    failTimeoutMs: parseDuration(failTimeout, 'handlerOptions.failTimeout'),
    responseTimeoutMs: isZeroDuration(responseTimeout) ? 0 : parseDuration(responseTimeout, 'handlerOptions.responseTimeout'),
  };
}

function isDuration(value: string | number): boolean {
  try {
    parseDuration(value, '');
    return true;
  } catch {
    return false;
  }
}

/** What the silence check saw of one backend (control path: the check timer only). */
interface SilenceState {
  /** The backend's request and response counters at the last check that saw a response, or at its last timeout. */
  requests: number;
  responses: number;
  /** When a check first saw requests with no response since (0: none pending). */
  sinceMs: number;
}

/** A backend's passive-health state in one handler (control path: touched on failures and table rebuilds only). */
interface BackendHealthState {
  /** Failures counted since `sinceMs` (reset when failTimeout has passed since then). */
  fails: number;
  sinceMs: number;
  /** Out of the table until this time (0: in it), and since when. */
  downUntilMs: number;
  downSinceMs: number;
  timer: NodeJS.Timeout | null;
  /** When it last came back into the table (0: never out), and when a health-check probe last brought it back. */
  upMs: number;
  probeUpMs: number;
  /**
   * Its traffic failed soon after a probe had brought it back: it answers probes but not its clients (a half-dead
   * backend), so probes no longer bring it back early; it comes back after failTimeout, as without the check. Cleared
   * once it has served failTimeout in the table without a traffic failure.
   */
  probesNotTrusted: boolean;
}

/** Active health check options (handlerOptions.healthCheck). */
interface ProbeOptions {
  readonly payload: Buffer;
  /** Text the answer must contain (latin1), or null: any answer. */
  readonly expect: string | null;
  readonly intervalMs: number;
  readonly timeoutMs: number;
}

const PROBE_KEYS: readonly string[] = ['send', 'sendHex', 'expect', 'interval', 'timeout'];
export const DEFAULT_PROBE_INTERVAL_MS = 5_000;
export const DEFAULT_PROBE_TIMEOUT_MS = 1_000;

function readProbeOptions(options: Readonly<Record<string, unknown>>): ProbeOptions | null {
  const hc = options.healthCheck;
  if (hc === undefined || hc === null) return null;
  const example = '{ "send": "PING", "expect": "PONG", "interval": "5s", "timeout": "1s" }';
  if (typeof hc !== 'object' || Array.isArray(hc)) throw new ConfigError(`handlerOptions.healthCheck must be an object such as ${example}, got ${JSON.stringify(hc)}`);
  const o = hc as Record<string, unknown>;
  for (const k of Object.keys(o)) {
    if (!PROBE_KEYS.includes(k)) throw new ConfigError(`handlerOptions.healthCheck.${k} is not a health-check option (it has ${PROBE_KEYS.join(', ')})`);
  }
  let payload: Buffer;
  if (o.send !== undefined && o.sendHex !== undefined) throw new ConfigError('handlerOptions.healthCheck has both send and sendHex: give one');
  if (o.send !== undefined) {
    if (typeof o.send !== 'string' || o.send.length === 0) throw new ConfigError(`handlerOptions.healthCheck.send must be a non-empty text, got ${JSON.stringify(o.send)}`);
    payload = Buffer.from(o.send, 'utf8');
  } else if (o.sendHex !== undefined) {
    if (typeof o.sendHex !== 'string' || !/^([0-9a-fA-F]{2})+$/.test(o.sendHex)) {
      throw new ConfigError(`handlerOptions.healthCheck.sendHex must be hex bytes, two digits each, such as "0a0b", got ${JSON.stringify(o.sendHex)}`);
    }
    payload = Buffer.from(o.sendHex, 'hex');
  } else {
    throw new ConfigError('handlerOptions.healthCheck needs one of send (a non-empty text) or sendHex (hex bytes, e.g. "0a0b")');
  }
  if (o.expect !== undefined && (typeof o.expect !== 'string' || o.expect.length === 0)) {
    throw new ConfigError(`handlerOptions.healthCheck.expect must be a non-empty text the answer contains, got ${JSON.stringify(o.expect)}`);
  }
  const duration = (v: unknown, name: string, def: number): number => {
    if (v === undefined) return def;
    if (typeof v !== 'string' && typeof v !== 'number') throw new ConfigError(`handlerOptions.healthCheck.${name} must be a duration such as 1s, got ${JSON.stringify(v)}`);
    return parseDuration(v, `handlerOptions.healthCheck.${name}`);
  };
  const intervalMs = duration(o.interval, 'interval', DEFAULT_PROBE_INTERVAL_MS);
  const timeoutMs = duration(o.timeout, 'timeout', DEFAULT_PROBE_TIMEOUT_MS);
  if (timeoutMs >= intervalMs) throw new ConfigError(`handlerOptions.healthCheck.timeout (${timeoutMs} ms) must be shorter than its interval (${intervalMs} ms)`);
  return { payload, expect: typeof o.expect === 'string' ? o.expect : null, intervalMs, timeoutMs };
}

/**
 * One backend's active health check in one worker: every interval, a probe datagram on a socket of its own,
 * connected to the backend; an answer (containing `expect`, if set) within the timeout is a success, no answer or
 * ICMP port unreachable a failure. Control path: one datagram per interval per backend per worker.
 */
class Prober {
  private socket: dgram.Socket | null = null;
  private readonly timer: NodeJS.Timeout;
  private deadline: NodeJS.Timeout | null = null;
  private pending = false;

  constructor(private readonly handler: ProxyHandler, private readonly backend: ProxyBackend, private readonly o: ProbeOptions) {
    this.timer = setInterval(() => this.send(), o.intervalMs);
    this.timer.unref();
    this.send();
  }

  private open(): dgram.Socket {
    const s = dgram.createSocket(this.backend.socketType);
    s.on('message', (msg) => {
      if (!this.pending || (this.o.expect !== null && !msg.toString('latin1').includes(this.o.expect))) return;
      this.settle();
      this.handler.probeSucceeded(this.backend);
    });
    s.on('error', (err: NodeJS.ErrnoException) => {
      // Refused (ICMP port unreachable) settles the probe as failed; other errors wait for the timeout.
      if (this.pending && err.code === 'ECONNREFUSED') { this.settle(); this.handler.probeFailedFor(this.backend, 'probe refused'); }
    });
    s.connect(this.backend.port, this.backend.host);
    s.unref();
    return s;
  }

  private send(): void {
    if (this.pending) return; // the previous probe is still within its timeout
    this.socket ??= this.open();
    this.pending = true;
    const socket = this.socket;
    const go = (): void => { if (this.socket === socket) socket.send(this.o.payload, () => { /* a failed send shows as no answer */ }); };
    try { socket.remoteAddress(); go(); } catch { socket.once('connect', go); }
    this.deadline = setTimeout(() => {
      if (!this.pending) return;
      // Timers run before the loop reads its sockets: after a long turn (an overloaded worker) the answer may be
      // waiting unread. Judge after this turn's reads (setImmediate runs after them): a waiting answer settles it.
      setImmediate(() => {
        if (!this.pending) return;
        this.settle();
        this.handler.probeFailedFor(this.backend, 'probe unanswered');
      });
    }, this.o.timeoutMs);
    this.deadline.unref();
  }

  private settle(): void {
    this.pending = false;
    if (this.deadline !== null) clearTimeout(this.deadline);
    this.deadline = null;
  }

  stop(): void {
    clearInterval(this.timer);
    this.settle();
    const s = this.socket;
    this.socket = null;
    if (s !== null) try { s.close(); } catch { /* closed */ }
  }
}

function readPreconnectLimit(options: Readonly<Record<string, unknown>>): number {
  const value = options.preconnectQueuePackets;
  if (value === undefined) return DEFAULT_PRECONNECT_QUEUE_PACKETS;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 0 || value > MAX_PRECONNECT_QUEUE_PACKETS) {
    throw new ConfigError(
      `handlerOptions.preconnectQueuePackets must be an integer from 0 to ${MAX_PRECONNECT_QUEUE_PACKETS}, got ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** The proxy's handlerOptions; any other key is a mistake (a typo would otherwise leave a default in force). */
const PROXY_OPTIONS: readonly string[] = ['maxFails', 'failTimeout', 'responseTimeout', 'preconnectQueuePackets', 'healthCheck'];

function checkOptionNames(options: Readonly<Record<string, unknown>>): void {
  for (const key of Object.keys(options)) {
    if (!PROXY_OPTIONS.includes(key)) throw new ConfigError(`handlerOptions.${key} is not a proxy option (it has ${PROXY_OPTIONS.join(', ')})`);
  }
}

export class ProxyHandler implements FlowHandler {
  readonly name = 'proxy';
  readonly stats = new ProxyStats();
  /** Backends of the current table; table entries index this array. */
  private backends: ProxyBackend[] = [];
  private backendsByKey = new Map<string, ProxyBackend>();
  /** Every configured backend with its weight (what `table` is when none is down). */
  private fullTable: Int32Array = new Int32Array(0);
  /** The table new flows are looked up in: `fullTable` without the backends passive health took out. */
  private table: Int32Array = new Int32Array(0);
  private readonly sessions = new Set<UpstreamSession>();
  private readonly preconnectLimit: number;
  private health: HealthOptions;
  private readonly healthByKey = new Map<string, BackendHealthState>();
  /** Every backend with a weight is out: the table keeps them all, and flows stay where they are. */
  private allDown = false;
  /** Silence check state by backend stat index, and its timer (null while responseTimeout is off). */
  private readonly silence = new Map<number, SilenceState>();
  private silenceTimer: NodeJS.Timeout | null = null;

  private log: HandlerContext['log'];
  /** Active health check (handlerOptions.healthCheck): its options, and one prober per backend; none in the primary's check. */
  private probe: ProbeOptions | null;
  private readonly probing: boolean;
  private probers: Prober[] = [];

  constructor(ctx: HandlerContext) {
    this.log = ctx.log;
    checkOptionNames(ctx.options);
    this.preconnectLimit = readPreconnectLimit(ctx.options);
    this.health = readHealthOptions(ctx.options);
    this.probe = readProbeOptions(ctx.options);
    this.probing = ctx.workerId >= 0;
    this.applyBackends(ctx);
    this.startSilenceCheck();
    this.startProbes();
  }

  /** (Re)starts the probers for the current backends and healthCheck options (none when it is not set). */
  private startProbes(): void {
    for (const p of this.probers) p.stop();
    this.probers = [];
    const probe = this.probe;
    if (probe === null || !this.probing) return;
    for (const b of this.backends) this.probers.push(new Prober(this, b, probe));
  }

  /**
   * A probe of `backend` was answered as expected: a backend out of the table comes back at once, unless its
   * traffic failed right after a probe brought it back before (see BackendHealthState.probesNotTrusted).
   */
  probeSucceeded(backend: ProxyBackend): void {
    this.stats.probeOk[backend.stat]++;
    if (this.isDown(backend) && this.healthByKey.get(backend.key)?.probesNotTrusted !== true) this.backendUp(backend.key, true);
  }

  /** A probe of `backend` got no expected answer in time, or was refused: one failure for passive health. */
  probeFailedFor(backend: ProxyBackend, why: string): void {
    this.stats.probeFailed[backend.stat]++;
    this.backendFailed(backend, why, true);
  }

  /** Open upstream sessions (flows with state in this handler). */
  get sessionCount(): number {
    return this.sessions.size;
  }

  /**
   * Counters for the worker's load report (control plane, every report interval): per backend
   * `<name>@<backend key>`, plus totals. The metrics registry turns them into flowlb_backend_* series.
   */
  counters(): Record<string, number> {
    const st = this.stats;
    const out: Record<string, number> = {
      dropped_no_backend: st.droppedNoBackend,
      dropped_connect_failed: st.droppedConnectFailed,
      dropped_queue_full: st.droppedQueueFull,
      dropped_migrating: st.droppedMigrating,
      active_upstreams: st.activeUpstreams,
    };
    st.backendKeys.forEach((key, i) => {
      out[`requests@${key}`] = st.requests[i]!;
      out[`responses@${key}`] = st.responses[i]!;
      out[`refused@${key}`] = st.refused[i]!;
      out[`send_errors@${key}`] = st.sendErrors[i]!;
      out[`socket_errors@${key}`] = st.socketErrors[i]!;
      out[`connect_errors@${key}`] = st.connectErrors[i]!;
      out[`local_errors@${key}`] = st.localErrors[i]!;
      out[`timeouts@${key}`] = st.timeouts[i]!;
      out[`probe_ok@${key}`] = st.probeOk[i]!;
      out[`probe_failed@${key}`] = st.probeFailed[i]!;
      out[`marked_down@${key}`] = st.markedDown[i]!;
      out[`down@${key}`] = st.down[i]!;
    });
    return out;
  }

  onFlowStart(flow: Flow): void {
    flow.state = this.startSession(flow);
  }

  onPacket(payload: Buffer, flow: Flow): void {
    let session = flow.state as UpstreamSession | undefined;
    if (session === undefined) session = this.startSession(flow);
    else if (session.stale) this.repick(session);
    const state = session.state;
    if (state === UPSTREAM_CONNECTED) {
      this.stats.requests[session.backend!.stat]++;
      // Not copied: Node sends at once (uv_udp_try_send) and only keeps a reference when the socket buffer is
      // full (EAGAIN); the batch buffer a payload views is not reused by flowlb while a send may hold it.
      session.socket!.send(payload, session.onSent);
    } else if (state === UPSTREAM_CONNECTING) {
      if (session.pending.length < this.preconnectLimit) session.pending.push(Buffer.from(payload));
      else this.stats.droppedQueueFull++;
    } else if (state === UPSTREAM_FAILED) {
      if (Date.now() - session.failedAtMs < RECONNECT_DELAY_MS) {
        this.stats.droppedConnectFailed++;
        return;
      }
      session.open(session.backend);
      session.pending.push(Buffer.from(payload));
    } else {
      this.stats.droppedNoBackend++;
    }
  }

  onFlowEnd(flow: Flow, _reason: FlowEndReason): void {
    const session = flow.state as UpstreamSession | undefined;
    if (session === undefined) return;
    this.endSession(session);
    flow.state = undefined;
  }

  exportFlow(flow: Flow): ExportedFlow {
    const session = flow.state as UpstreamSession | undefined;
    if (session === undefined) return { data: { backendKey: null } satisfies ProxyFlowData };
    const data: ProxyFlowData = { backendKey: session.backend?.key ?? null };
    const socket = session.socket;
    let exported: ExportedFlow;
    if (session.state === UPSTREAM_CONNECTED && socket !== null) {
      // Hand the socket over as it is: not closed (the handle goes to the new worker) and not read here any more.
      socket.removeListener('message', onUpstreamMessage);
      socket.removeListener('error', onUpstreamError);
      socket.on('error', ignoreUpstreamError);
      socket[kSession] = undefined;
      session.socket = null;
      this.stats.activeUpstreams--;
      exported = { data, socket };
    } else {
      // Not connected yet: there is no established source port to keep; the importer connects afresh.
      this.stats.droppedMigrating += session.closeSocket();
      exported = { data };
    }
    session.state = UPSTREAM_CLOSED;
    this.sessions.delete(session);
    flow.state = undefined;
    return exported;
  }

  importFlow(flow: Flow, exported: ExportedFlow): void {
    const data = exported.data as Partial<ProxyFlowData> | null | undefined;
    const key = typeof data?.backendKey === 'string' ? data.backendKey : null;
    const backend = key === null ? undefined : this.backendsByKey.get(key);
    const session = new UpstreamSession(this, flow);
    this.sessions.add(session);
    flow.state = session;
    const socket = exported.socket as UpstreamSocket | undefined;
    if (backend === undefined) {
      // Its backend is not in this worker's table (removed by a reload): the table's choice now.
      socket?.close();
      session.open(this.pick(flow));
      return;
    }
    if (socket === undefined) {
      session.open(backend);
      return;
    }
    socket.removeListener('error', ignoreUpstreamError);
    if (isJsConnected(socket) || adoptConnectedHandle(socket, backend)) {
      session.backend = backend;
      session.attach(socket);
      session.state = UPSTREAM_CONNECTED;
      // Down in this worker's view: the next packet picks another backend, as flows here did.
      if (this.isDown(backend)) session.stale = true;
      return;
    }
    this.stats.adoptFailures++;
    socket.close();
    session.open(backend);
  }

  reconfigure(ctx: HandlerContext): void {
    checkOptionNames(ctx.options);
    const health = readHealthOptions(ctx.options);
    this.applyBackends(ctx);
    const timeoutChanged = health.failTimeoutMs !== this.health.failTimeoutMs;
    const responseTimeoutChanged = health.responseTimeoutMs !== this.health.responseTimeoutMs;
    this.health = health;
    if (responseTimeoutChanged) this.startSilenceCheck();
    this.probe = readProbeOptions(ctx.options);
    this.startProbes();
    if (health.maxFails === 0) for (const key of [...this.healthByKey.keys()]) this.backendUp(key);
    else if (timeoutChanged) {
      // A backend already out stays out for the new failTimeout from when it was taken out, not the old one.
      const now = Date.now();
      for (const [key, h] of [...this.healthByKey]) {
        if (h.downUntilMs === 0) continue;
        const left = h.downSinceMs + health.failTimeoutMs - now;
        if (left <= 0) this.backendUp(key);
        else this.scheduleUp(key, h, left);
      }
    }
    // Flows keep their backend while it is configured (a weight of 0 drains: no new flows, established ones
    // stay). Flows of a removed backend, or without one, pick again on their next packet.
    for (const session of this.sessions) {
      const backend = session.backend;
      if (backend === null || !this.backendsByKey.has(backend.key)) session.stale = true;
    }
  }

  close(): void {
    for (const session of this.sessions) {
      session.closeSocket();
      session.state = UPSTREAM_CLOSED;
    }
    this.sessions.clear();
    for (const h of this.healthByKey.values()) if (h.timer !== null) clearTimeout(h.timer);
    this.healthByKey.clear();
    if (this.silenceTimer !== null) clearInterval(this.silenceTimer);
    this.silenceTimer = null;
    for (const p of this.probers) p.stop();
    this.probers = [];
  }

  /** (Re)starts the silence check for the current responseTimeout (stops it when 0), from a clean slate. */
  private startSilenceCheck(): void {
    if (this.silenceTimer !== null) clearInterval(this.silenceTimer);
    this.silenceTimer = null;
    this.silence.clear();
    const timeoutMs = this.health.responseTimeoutMs;
    if (timeoutMs === 0) return;
    this.seedSilence();
    this.silenceTimer = setInterval(() => this.checkSilence(Date.now()), Math.max(5, Math.floor(timeoutMs / SILENCE_CHECKS)));
    this.silenceTimer.unref();
  }

  /**
   * Starts the silence check of backends it has not seen from their counters now, so the first datagrams sent to
   * them count from the next check (seeded at the first check instead, they were not judged for a check interval).
   */
  private seedSilence(): void {
    const st = this.stats;
    for (const b of this.backends) {
      if (!this.silence.has(b.stat)) this.silence.set(b.stat, { requests: st.requests[b.stat]!, responses: st.responses[b.stat]!, sinceMs: 0 });
    }
  }

  /**
   * The silence check (every responseTimeout/SILENCE_CHECKS): a backend that was sent datagrams and has answered none of them,
   * on any flow of this worker, for responseTimeout (as seen by these checks: between 1 and 1.25 timeouts after the
   * first unanswered datagram) counts one timeout, a failure for passive health. Then it counts again only after
   * another responseTimeout with datagrams sent and no answer, so a lone datagram that wants no answer (a SIP ACK)
   * counts once at most; maxFails > 1 asks for more than one.
   */
  checkSilence(now: number): void {
    const st = this.stats;
    for (const backend of this.backends) {
      const i = backend.stat;
      const requests = st.requests[i]!, responses = st.responses[i]!;
      let s = this.silence.get(i);
      if (s === undefined) {
        this.silence.set(i, { requests, responses, sinceMs: 0 });
        continue;
      }
      if (responses !== s.responses || requests === s.requests) {
        s.requests = requests;
        s.responses = responses;
        s.sinceMs = 0;
        continue;
      }
      if (s.sinceMs === 0) {
        s.sinceMs = now;
        continue;
      }
      if (now - s.sinceMs < this.health.responseTimeoutMs) continue;
      s.requests = requests;
      s.sinceMs = 0;
      st.timeouts[i]++;
      this.backendFailed(backend, 'no answer');
    }
  }

  /**
   * Passive health (control path: called on a refused datagram or a failed connect, never for a packet that
   * went through). The maxFails-th failure within failTimeout takes the backend out of this worker's table for
   * failTimeout: new flows pick among the others, and its established flows pick again on their next packet
   * (its socket refuses them anyway). Then it is back in the table, and the next failure takes it out again.
   * If every backend with a weight is out, the table keeps them all: sending to a refusing backend loses what
   * dropping would lose, and the first one to come back is used at once.
   */
  backendFailed(backend: ProxyBackend, why: string, byProbe = false): void {
    const { maxFails, failTimeoutMs } = this.health;
    if (maxFails === 0 || !this.backendsByKey.has(backend.key)) return;
    const now = Date.now();
    let h = this.healthByKey.get(backend.key);
    if (h === undefined) {
      h = { fails: 0, sinceMs: now, downUntilMs: 0, downSinceMs: 0, timer: null, upMs: 0, probeUpMs: 0, probesNotTrusted: false };
      this.healthByKey.set(backend.key, h);
    }
    if (h.downUntilMs > now) return;
    if (now - h.sinceMs > failTimeoutMs) { h.fails = 0; h.sinceMs = now; }
    if (++h.fails < maxFails) return;
    h.fails = 0;
    h.downSinceMs = now;
    if (!byProbe) {
      // Taken out by its traffic within failTimeout of a probe bringing it back: probes do not show what its
      // clients get, and trusting them took such a backend out and back 39 times in 32 s (67 of 300 new flows
      // lost, against 10 without the check). Trusted again once it serves failTimeout without a traffic failure.
      if (h.probeUpMs > 0 && now - h.probeUpMs < failTimeoutMs) h.probesNotTrusted = true;
      else if (now - h.upMs >= failTimeoutMs) h.probesNotTrusted = false;
    }
    this.scheduleUp(backend.key, h, failTimeoutMs);
    this.stats.markedDown[backend.stat]++;
    this.stats.down[backend.stat] = 1;
    this.rebuildTable();
    this.log?.warn('backend taken out of the table', {
      backend: backend.key, why, failures: maxFails, forMs: failTimeoutMs, allDown: this.allDown,
      ...(h.probesNotTrusted && this.probe !== null ? { probesIgnored: 'it answers probes but its traffic failed' } : {}),
    });
    for (const session of this.sessions) if (session.backend !== null && session.backend.key === backend.key) session.stale = true;
  }

  private scheduleUp(key: string, h: BackendHealthState, afterMs: number): void {
    if (h.timer !== null) clearTimeout(h.timer);
    h.downUntilMs = Date.now() + afterMs;
    h.timer = setTimeout(() => this.backendUp(key), afterMs);
    h.timer.unref();
  }

  /** True while passive health keeps `backend` out of the table. */
  isDown(backend: ProxyBackend): boolean {
    const h = this.healthByKey.get(backend.key);
    return h !== undefined && h.downUntilMs > 0;
  }

  private backendUp(key: string, byProbe = false): void {
    const h = this.healthByKey.get(key);
    if (h === undefined || h.downUntilMs === 0) return;
    if (h.timer !== null) clearTimeout(h.timer);
    h.timer = null;
    h.downUntilMs = 0;
    h.fails = 0;
    h.upMs = Date.now();
    if (byProbe) h.probeUpMs = h.upMs;
    this.stats.down[this.stats.backendIndex(key)] = 0;
    this.rebuildTable();
    if (this.backendsByKey.has(key)) this.log?.info('backend back in the table', { backend: key });
    // Flows that stayed on a backend that is still down (every backend was down) can go here now; before, they
    // kept losing packets until their own backend's failTimeout ended.
    if (!this.allDown) for (const session of this.sessions) if (session.backend !== null && this.isDown(session.backend)) session.stale = true;
  }

  /** `table` from `fullTable` and the backends now down (the control path: a failure, a recovery, a reload). */
  private rebuildTable(): void {
    let down = 0, live = 0;
    for (const b of this.backends) {
      if (b.weight <= 0) continue;
      if (this.isDown(b)) down++;
      else live++;
    }
    this.allDown = down > 0 && live === 0;
    this.table = down === 0 || live === 0
      ? this.fullTable
      : buildMaglevTable(this.backends.map((b) => ({ key: b.key, weight: this.isDown(b) ? 0 : b.weight })));
  }

  private applyBackends(ctx: HandlerContext): void {
    const backends: ProxyBackend[] = [];
    const byKey = new Map<string, ProxyBackend>();
    for (const b of ctx.backends) {
      const key = backendKey(b.host, b.port);
      if (byKey.has(key)) throw new ConfigError(`backend ${key} is listed twice`);
      const backend: ProxyBackend = {
        key,
        host: b.host,
        port: b.port,
        weight: b.weight,
        socketType: socketTypeOf(b),
        stat: this.stats.backendIndex(key),
      };
      backends.push(backend);
      byKey.set(key, backend);
    }
    // Build first: a bad weight throws here and leaves the previous table in place.
    this.fullTable = buildMaglevTable(backends);
    this.backends = backends;
    this.backendsByKey = byKey;
    if (this.silenceTimer !== null) this.seedSilence();
    // A removed backend's health goes with it.
    for (const key of [...this.healthByKey.keys()]) if (!byKey.has(key)) this.backendUp(key);
    this.rebuildTable();
  }

  private pick(flow: Flow): ProxyBackend | null {
    const index = lookupMaglev(this.table, flow.hash);
    return index < 0 ? null : this.backends[index]!;
  }

  private startSession(flow: Flow): UpstreamSession {
    const session = new UpstreamSession(this, flow);
    this.sessions.add(session);
    session.open(this.pick(flow));
    flow.state = session;
    return session;
  }

  private repick(session: UpstreamSession): void {
    session.stale = false;
    const backend = session.backend;
    const configured = backend !== null && this.backendsByKey.has(backend.key);
    if (configured && (!this.isDown(backend) || this.allDown)) return;
    const next = this.pick(session.flow);
    // Every backend is down: keep the socket it has (moving to another dead one only changes the source port).
    if (configured && next !== null && next.key === backend.key) return;
    // Datagrams queued for a connect to the removed or failed backend go to the new one instead.
    const pending = session.pending;
    session.pending = [];
    session.closeSocket();
    session.open(next);
    if (session.state === UPSTREAM_CONNECTING) session.pending = pending;
    else this.stats.droppedNoBackend += pending.length;
  }

  private endSession(session: UpstreamSession): void {
    session.closeSocket();
    session.state = UPSTREAM_CLOSED;
    this.sessions.delete(session);
  }
}

function socketTypeOf(backend: HandlerContext['backends'][number]): 'udp4' | 'udp6' {
  const ipVersion = net.isIP(backend.host);
  if (ipVersion !== 0) return ipVersion === 6 ? 'udp6' : 'udp4';
  // A host name: the config's BackendSpec carries the family it resolved or was told.
  return (backend as { family?: unknown }).family === 6 ? 'udp6' : 'udp4';
}

/** The `proxy` handler factory (async like every factory may be; the Maglev hasher loads at import). */
export async function createProxyHandler(ctx: HandlerContext): Promise<ProxyHandler> {
  return new ProxyHandler(ctx);
}
