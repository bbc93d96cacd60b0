/**
 * The interface a flowlb handler implements. A handler runs inside every worker process; it sees only
 * the flows of the buckets its worker owns. `echo`, `proxy` and user modules (`--handler ./file.js`)
 * all implement it.
 *
 * Per-packet rules for implementers: `onPacket` is on the hot path. Keep per-flow state in `flow.state`
 * (created in `onFlowStart`), do not log per packet, do not hold on to `payload` after returning unless
 * you copy it (it is a view into a batch buffer).
 */

/**
 * Why a flow ended: idle timeout, or the worker shutting down. `evicted` is reserved (flowlb does not evict flows
 * today: a full table drops new flows). A flow exported to another worker gets no onFlowEnd where it left.
 */
export type FlowEndReason = 'idle' | 'shutdown' | 'evicted';

/** One UDP flow: a client's (address, port) talking to one of flowlb's listening sockets. */
export interface Flow {
  /** Slot of this flow in the worker's flow table; unique among the worker's live flows. */
  readonly id: number;
  /** Client address as a string (IPv4 dotted quad or IPv6 literal). */
  readonly remoteAddress: string;
  readonly remotePort: number;
  readonly family: 4 | 6;
  /** flowlb's own address and port the client sent to. */
  readonly localAddress: string;
  readonly localPort: number;
  /** The 32-bit xxHash of the flow's 4-tuple (stable across workers and releases). */
  readonly hash: number;
  /** The hash bucket of the flow (hash & (buckets - 1)). */
  readonly bucket: number;
  /** Readable key, e.g. "127.0.0.1:5000>127.0.0.1:9000". Built on first use. */
  readonly key: string;
  /** Handler-owned per-flow state. flowlb never reads it; it moves with the flow on migration via exportFlow/importFlow. */
  state: unknown;
  /** Sends a datagram to the client, from flowlb's listening address and port. */
  reply(payload: Uint8Array): void;
}

/** What flowlb tells a handler when it starts in a worker. */
export interface HandlerContext {
  /** Index of this worker (0-based slot). */
  readonly workerId: number;
  readonly workers: number;
  readonly buckets: number;
  readonly idleTimeoutMs: number;
  /** Backends from the config (proxy uses them; custom handlers may too). */
  readonly backends: ReadonlyArray<{ readonly host: string; readonly port: number; readonly weight: number }>;
  /** Options from the config file's `handlerOptions` object, untouched. */
  readonly options: Readonly<Record<string, unknown>>;
  /**
   * The worker's logger (JSON lines on stderr, with the worker's id): for events, never per packet. Absent in
   * the primary's start-up check of the handler.
   */
  readonly log?: HandlerLog;
}

export interface HandlerLog {
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/** A flow's exported state: JSON-serialisable data plus, optionally, one dgram socket to carry over (proxy upstream binding). */
export interface ExportedFlow {
  data: unknown;
  /** A bound dgram socket whose handle moves to the new worker (so an upstream keeps seeing the same source address and port). */
  socket?: import('node:dgram').Socket;
}

export interface FlowHandler {
  readonly name?: string;
  /**
   * The handler keeps nothing per flow: it never sets `flow.state` and never keeps a Flow after the call it
   * was given in (echo, a stateless request/response server). flowlb then passes one reused Flow, re-aimed at
   * each call's flow, instead of an object per flow, so an idle flow costs no heap object at all. Setting
   * `flow.state` then throws (counted as a handler error). Without it, each flow gets its own Flow object,
   * made on first use.
   */
  readonly statelessFlows?: boolean;
  /** Called once per worker before any packet. May be async. */
  init?(ctx: HandlerContext): void | Promise<void>;
  /** A new flow: set up `flow.state`. */
  onFlowStart?(flow: Flow): void;
  /** One datagram of a flow, in arrival order. Throwing counts the packet as a handler error; the worker keeps serving. */
  onPacket(payload: Buffer, flow: Flow): void;
  /** The flow is gone (idle timeout, shutdown, or evicted). Not called for `migrated` flows after exportFlow. */
  onFlowEnd?(flow: Flow, reason: FlowEndReason): void;
  /** The flow is moving to another worker: return its state. After this the flow is removed here without onFlowEnd. */
  exportFlow?(flow: Flow): ExportedFlow;
  /** The flow arrived from another worker: restore `flow.state` from what exportFlow returned. Called instead of onFlowStart. */
  importFlow?(flow: Flow, exported: ExportedFlow): void;
  /** Reload: new backends/options from a reloaded config. Established flows should keep their backend unless it was removed. */
  reconfigure?(ctx: HandlerContext): void;
  /** Worker shutdown. */
  close?(): void | Promise<void>;
}

/** A handler module exports `default` (or `handler`) as a FlowHandler or a factory returning one. */
export type HandlerFactory = (ctx: HandlerContext) => FlowHandler | Promise<FlowHandler>;
