/**
 * A worker process: reads batches of frames from its channel (fd 4), keeps the flow table of the buckets it
 * owns, queues packets per flow (DRR), runs the handler, replies through the front socket handles the primary
 * passed it (reading left to the primary), expires idle flows of its own buckets, and reports its load.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { FlowlbConfig } from '../config.js';
import {
  DROP_CONNECT_FAILED, DROP_FLOW_QUEUE_FULL, DROP_FLOW_TABLE_FULL, DROP_HANDLER_ERROR, DROP_MALFORMED, DROP_MIGRATING, DROP_NO_BACKEND,
  DROP_PRECONNECT_QUEUE_FULL, DROP_QUEUE_FULL,
  DROP_REASON_COUNT,
} from '../datapath/counters.js';
import { AddressText } from '../datapath/address-text.js';
import { ENQ_FLOW_FULL, ENQ_FULL, ENQ_OK, ENQ_PUSHED_OUT, FairQueue } from '../datapath/fair-queue.js';
import { FlowTable } from '../datapath/flow-table.js';
import {
  FRAME_CLOCK, FRAME_HEADER_BYTES, FRAME_PACKET, FRAME_RELEASE, FrameReader, frameBucket, frameClockMs, frameEpoch,
  frameKind,
} from '../datapath/frame.js';
import { instantiateHandler, loadHandlerFactory } from '../handlers/load.js';
import type { ExportedFlow, Flow, FlowHandler, HandlerContext } from '../handlers/types.js';
import { createLogger, type Logger } from '../log.js';
import {
  isFlowlbMessage, LATENCY_BOUNDS_MS, type FlowTransfer, type PrimaryToWorker, type WorkerCounters, type WorkerToPrimary,
} from './protocol.js';
import { CpuLimitReader } from './cpu-limit.js';
import { startOrphanWatchdog } from './orphan-watchdog.js';
import { SchedStatReader } from './sched-stat.js';
import { startReading, stopReading } from './socket-handle.js';

/**
 * A handler's own drops of packets it accepted (its `counters()` keys), and the drop reason each adds to: the
 * proxy's (no backend, a failed upstream connect, a full pre-connect queue, a connect cut short by a migration:
 * the same names as flowlb_proxy_dropped_packets_total; its connect failures were counted as no_backend, for a
 * healthy backend when flowlb ran out of descriptors), or a datagram the handler could not parse (sockperf).
 */
const HANDLER_DROPS: readonly (readonly [string, number])[] = [
  ['dropped_no_backend', DROP_NO_BACKEND], ['dropped_connect_failed', DROP_CONNECT_FAILED],
  ['dropped_queue_full', DROP_PRECONNECT_QUEUE_FULL], ['dropped_migrating', DROP_MIGRATING], ['dropped_malformed', DROP_MALFORMED],
];

/**
 * A drain turn serves packets in slices until DRAIN_BUDGET packets or DRAIN_TIME_MS have passed, then yields to
 * the event loop, so the channel keeps being read and DRR has a queue to order. A slice is DRAIN_SLICE packets
 * (one clock read per slice) for cheap packets, fewer when packets are expensive: a slice takes about
 * DRAIN_TIME_MS / 2, so a new flow joins the DRR ring within a few milliseconds whatever the handler costs.
 * With a fixed slice of 16, light flows behind a 2 ms-per-packet heavy flow waited 33-74 ms (16 x 2 ms and more).
 */
const DRAIN_BUDGET = 256;
/**
 * A stopping worker serves its queue for SHUTDOWN_DRAIN_SHARE of shutdownTimeout (the rest is for ending its flows
 * and closing the handler before the primary kills it), at least SHUTDOWN_DRAIN_MIN_MS. It was a fixed second: with
 * the default 5 s, 1,929 queued packets (3 s of work) were abandoned after 1.05 s.
 */
const SHUTDOWN_DRAIN_SHARE = 0.7;
const SHUTDOWN_DRAIN_MIN_MS = 1000;
/** Orphan watchdog: the parent pid is checked this often, and an orphan gets this long to stop by itself. */
const ORPHAN_CHECK_MS = 500;
const ORPHAN_GRACE_MS = 3000;
const DRAIN_SLICE = 16;
const DRAIN_TIME_MS = 2;
/** Handler exceptions are logged at most this often (with how many there were since the last line). */
const HANDLER_LOG_EVERY_MS = 10_000;
/**
 * The work a drain turn has done is counted with the least per-packet time of the last SLICE_COST_SAMPLES slices:
 * time off the CPU (a CFS quota's throttling, other processes) only ever adds to a slice's wall time, so the minimum
 * is the closest to what a packet costs. (Turns ended by wall time ended after a packet or two under a quota: 13%
 * less throughput at 250 us/packet and a quarter core, measured with the skew bench's calibration.)
 */
const SLICE_COST_SAMPLES = 8;
/** A drain turn ends after at most this much wall time, whatever the work estimate says. */
const DRAIN_WALL_CAP_MS = 4 * DRAIN_TIME_MS;
/** The sweep visits every owned bucket at least this often relative to the idle timeout. */
const SWEEP_SLICES = 8;

/**
 * What a handler sees of a flow: the flow's number and getters over the worker's flow table, so a flow costs no
 * copies of its address, port or hash on the heap. Once the flow ends (or moves away) its fields are copied into
 * the object (`detach`), so a handler that keeps the Flow past onFlowEnd (a late upstream reply) still sees the
 * flow it had, not whichever flow reuses the table slot.
 */
abstract class FlowFields implements Flow {
  abstract state: unknown;
  abstract readonly key: string;
  protected ended: EndedFlow | null = null;
  constructor(public id: number, protected readonly rt: WorkerRuntime) {}
  get remoteAddress(): string { return this.ended !== null ? this.ended.remoteAddress : this.rt.remoteAddressOf(this.id); }
  get remotePort(): number { return this.ended !== null ? this.ended.remotePort : this.rt.flows.portOf(this.id); }
  get family(): 4 | 6 { return this.ended !== null ? this.ended.family : this.rt.flows.familyOf(this.id) === 4 ? 4 : 6; }
  get listener(): number { return this.ended !== null ? this.ended.listener : this.rt.flows.listenerOf(this.id); }
  get localAddress(): string { return this.rt.localAddressOf(this.listener); }
  get localPort(): number { return this.rt.localPortOf(this.listener); }
  get hash(): number { return this.ended !== null ? this.ended.hash : this.rt.flows.hashOf(this.id); }
  get bucket(): number { return this.ended !== null ? this.ended.bucket : this.rt.flows.bucketOf(this.id); }

  protected keyText(): string {
    const v6 = this.family === 6;
    const r = v6 ? `[${this.remoteAddress}]` : this.remoteAddress;
    const l = v6 ? `[${this.localAddress}]` : this.localAddress;
    return `${r}:${this.remotePort}>${l}:${this.localPort}`;
  }

  reply(payload: Uint8Array): void {
    if (this.ended === null) this.rt.reply(this.id, payload);
    else this.rt.replyTo(this.ended.listener, this.ended.remotePort, this.ended.remoteAddress, payload);
  }
}

interface EndedFlow { remoteAddress: string; remotePort: number; family: 4 | 6; listener: number; hash: number; bucket: number }

/** A flow's own object: made on first use (flow start when the handler has onFlowStart, else its first packet). */
class FlowRef extends FlowFields {
  state: unknown = undefined;
  private keyCache: string | null = null;

  get key(): string {
    if (this.keyCache === null) this.keyCache = this.keyText();
    return this.keyCache;
  }

  /** The table slot is about to be freed: keep this flow's fields in the object. */
  detach(): void {
    if (this.ended !== null) return;
    this.ended = {
      remoteAddress: this.remoteAddress, remotePort: this.remotePort, family: this.family, listener: this.listener,
      hash: this.hash, bucket: this.bucket,
    };
  }
}

/**
 * The one Flow a worker hands a handler that declared `statelessFlows`: re-aimed at each call's flow, valid only
 * during the call, with no per-flow state.
 */
class FlowView extends FlowFields {
  get state(): unknown { return undefined; }
  set state(_value: unknown) {
    throw new Error('flow.state set by a handler that declared statelessFlows (flows are views, not objects)');
  }

  /** The view is re-aimed at each call's flow and cut loose after it (id -1): kept and used later, it would reply to another client. */
  override reply(payload: Uint8Array): void {
    if (this.id < 0) throw new Error('flow.reply() after the call returned, by a handler that declared statelessFlows (the Flow is only valid during the call)');
    super.reply(payload);
  }

  get key(): string { return this.keyText(); }
}

export class WorkerRuntime {
  readonly flows: FlowTable;
  readonly queue: FairQueue;
  /** Packets per drain slice, and the per-packet times (ms) of the last slices that size it (see SLICE_COST_SAMPLES). */
  private slice = DRAIN_SLICE;
  private readonly sliceCost = new Float64Array(SLICE_COST_SAMPLES).fill(Infinity);
  private sliceCostAt = 0;
  private packetMs = Infinity;
  /** Flow objects of a handler that keeps per-flow state, made on first use; unused with `statelessFlows`. */
  readonly refs: (FlowRef | undefined)[];
  /** The re-aimed Flow of a `statelessFlows` handler, else null. */
  private readonly view: FlowView | null;
  private readonly addressText = new AddressText();
  readonly owned: Uint8Array;
  readonly fronts: (dgram.Socket | null)[];
  /** Bound port of each front socket, read once when its handle arrives (not a getsockname per flow). */
  readonly frontPorts: number[] = [];
  readonly counters = new Float64Array(10);
  readonly drops = new Float64Array(DROP_REASON_COUNT);
  readonly latencyCounts = new Float64Array(LATENCY_BOUNDS_MS.length + 1);
  latencySumMs = 0;
  handlerCrashes = 0;

  /** Coarse clock (ms, performance.now()), updated once per batch and per drain turn. */
  nowMs = performance.now();
  /** Wall-clock time of the batch being parsed, from its CLOCK frame. */
  private batchWallMs = 0;
  /** A clock frame came and no packet is being timed: the next packet queued is (FairQueue.sample). */
  private latencyArmed = false;
  /** The batch stamp of the packet being timed, and the packets received when it was taken. */
  private sampleWallMs = 0;
  private sampleRx = 0;
  private drainScheduled = false;
  private readonly drainBound = this.drain.bind(this);
  private readonly serveBound = this.servePacket.bind(this);
  private readonly reader: FrameReader;
  private sweepCursor = 0;
  private handedOver: Buffer[] = [];
  private readonly collectBound = this.collectFrame.bind(this);
  private closing = false;
  /** Changes on reload (SIGHUP). */
  idleTimeoutMs: number;

  constructor(
    readonly config: FlowlbConfig,
    readonly workerId: number,
    readonly handler: FlowHandler,
    readonly log: Logger,
  ) {
    this.idleTimeoutMs = config.idleTimeoutMs;
    const cap = config.maxFlowsPerWorker;
    this.flows = new FlowTable(cap, config.buckets);
    // The hard queue capacity sits above the overload limit: past the limit the primary moves buckets away;
    // past the capacity the worker itself sheds the heaviest flows' packets.
    const queueCapacity = Math.max(1024, config.balancer.queueLimit * 4);
    this.queue = new FairQueue(queueCapacity, cap, config.queue.flowQueueLimit, config.queue.quantumBytes);
    this.view = handler.statelessFlows === true ? new FlowView(-1, this) : null;
    this.refs = this.view !== null ? [] : new Array<FlowRef | undefined>(cap).fill(undefined);
    this.owned = new Uint8Array(config.buckets);
    this.fronts = new Array<dgram.Socket | null>(config.listen.length).fill(null);
    this.reader = new FrameReader(this.onFrame.bind(this));
  }

  // ---- packet path ----

  onChunk(chunk: Buffer): void {
    this.nowMs = performance.now();
    this.reader.push(chunk);
    if (this.reader.malformed > 0) { this.drops[DROP_MALFORMED]! += this.reader.malformed; this.reader.malformed = 0; }
    if (!this.drainScheduled && this.queue.depth > 0) { this.drainScheduled = true; setImmediate(this.drainBound); }
  }

  private onFrame(buf: Buffer, off: number, len: number): void {
    const kind = frameKind(buf, off);
    if (kind === FRAME_PACKET) {
      const c = this.counters;
      c[C_RX_PACKETS]!++;
      c[C_RX_BYTES]! += len - FRAME_HEADER_BYTES;
      let f = this.flows.lookup(buf, off);
      if (f < 0) {
        f = this.flows.insert(buf, off, this.nowMs);
        if (f < 0) { this.drops[DROP_FLOW_TABLE_FULL]!++; return; }
        this.startFlow(f, undefined);
      }
      const r = this.queue.enqueue(f, buf, off + FRAME_HEADER_BYTES, len - FRAME_HEADER_BYTES);
      if (r !== 0) {
        if (r === ENQ_FLOW_FULL) this.drops[DROP_FLOW_QUEUE_FULL]!++;
        else if (r === ENQ_FULL || r === ENQ_PUSHED_OUT) this.drops[DROP_QUEUE_FULL]!++;
      }
      if (this.latencyArmed && (r === ENQ_OK || r === ENQ_PUSHED_OUT)) {
        this.queue.sample = this.queue.lastEnqueued;
        this.sampleWallMs = this.batchWallMs;
        this.sampleRx = c[C_RX_PACKETS]!;
        this.latencyArmed = false;
      }
    } else if (kind === FRAME_CLOCK) {
      this.batchWallMs = frameClockMs(buf, off);
      // One packet timed at a time, from its batch's stamp to its service (queueing in the worker included).
      this.latencyArmed = this.queue.sample < 0;
    } else if (kind === FRAME_RELEASE) {
      this.release(frameBucket(buf, off), frameEpoch(buf, off));
    } else {
      this.drops[DROP_MALFORMED]!++;
    }
  }

  private startFlow(f: number, imported: ExportedFlow | undefined): void {
    this.counters[C_FLOWS_CREATED]!++;
    const h = this.handler;
    try {
      // A handler without importFlow starts a migrated flow afresh (its state did not come along): without this,
      // a stateful handler found flow.state undefined on every later packet of every flow that moved.
      if (imported !== undefined && h.importFlow) h.importFlow(this.flowOf(f), imported);
      else if (h.onFlowStart) h.onFlowStart(this.flowOf(f));
    } catch (err) {
      this.hookFailed(err);
    }
    if (this.view !== null) this.view.id = -1;
  }

  /** A handler hook other than onPacket threw: no packet was lost, so a crash (isolated), not a drop; logged at most every 10 s. */
  hookFailed(err: unknown): void {
    this.handlerCrashes++;
    this.lastHandlerError = err;
  }

  /** The last exception from a handler (onPacket or a hook) since the last log line, and how many there were. */
  lastHandlerError: unknown = undefined;

  /** The Flow to pass the handler for flow `f`: the view re-aimed at it, or the flow's own object (made now if new). */
  private flowOf(f: number): FlowFields {
    const v = this.view;
    if (v !== null) { v.id = f; return v; }
    let ref = this.refs[f];
    if (ref === undefined) { ref = new FlowRef(f, this); this.refs[f] = ref; }
    return ref;
  }

  remoteAddressOf(f: number): string {
    const t = this.flows;
    return this.addressText.of(t.bytes, t.addrOffset(f), t.familyOf(f));
  }

  localAddressOf(listener: number): string {
    return (this.config.listen[listener] ?? this.config.listen[0]!).host;
  }

  localPortOf(listener: number): number {
    return this.frontPorts[listener] ?? (this.config.listen[listener] ?? this.config.listen[0]!).port;
  }

  private drain(): void {
    this.drainScheduled = false;
    this.nowMs = performance.now();
    const start = this.nowMs;
    let served = 0;
    while (served < DRAIN_BUDGET && this.queue.depth > 0) {
      const before = this.nowMs;
      const n = this.queue.serve(this.slice, this.serveBound);
      served += n;
      this.nowMs = performance.now();
      if (this.queue.sampleServed) {
        // Served in this slice: timed to the slice's start (slices last about a millisecond at most). It stands for
        // the packets that came while it waited: unweighted, a deep queue (one sample per queue delay) was drowned by
        // a light worker's many samples (p50 under 250 us with clients waiting 6 s).
        this.queue.sampleServed = false;
        this.recordLatency(performance.timeOrigin + before - this.sampleWallMs, Math.max(1, this.counters[C_RX_PACKETS]! - this.sampleRx));
      }
      if (n > 0) {
        const costs = this.sliceCost;
        costs[this.sliceCostAt] = (this.nowMs - before) / n;
        this.sliceCostAt = (this.sliceCostAt + 1) % SLICE_COST_SAMPLES;
        let packetMs = costs[0]!;
        for (let i = 1; i < SLICE_COST_SAMPLES; i++) if (costs[i]! < packetMs) packetMs = costs[i]!;
        this.packetMs = packetMs;
        // The slice follows the latest cost at once (a newly expensive flow gets small slices from its first one);
        // a throttled slice only makes the next one smaller, which costs a clock read, not a turn.
        this.slice = Math.max(1, Math.min(DRAIN_SLICE, Math.floor(DRAIN_TIME_MS / 2 / costs[(this.sliceCostAt + SLICE_COST_SAMPLES - 1) % SLICE_COST_SAMPLES]!)));
      }
      // A turn ends after DRAIN_TIME_MS of work (packets x their cost), not of wall time: a worker off the CPU (a
      // quota's throttling) would otherwise end its turns after a packet or two, and pay an event-loop turn for each
      // (13% less throughput at 250 us/packet under a quarter-core quota). The wall-time cap bounds the rest.
      if (served * this.packetMs >= DRAIN_TIME_MS || this.nowMs - start >= DRAIN_WALL_CAP_MS) break;
    }
    if (this.queue.depth > 0 && !this.drainScheduled) { this.drainScheduled = true; setImmediate(this.drainBound); }
  }

  /** One timed packet standing for `weight` packets (see drain). */
  private recordLatency(ms: number, weight: number): void {
    if (!(ms >= 0)) ms = 0;
    let i = 0;
    const b = LATENCY_BOUNDS_MS;
    while (i < b.length && ms > b[i]!) i++;
    this.latencyCounts[i]! += weight;
    this.latencySumMs += ms * weight;
  }

  private servePacket(f: number, buf: Buffer, off: number, len: number): void {
    const t = this.flows;
    t.touch(f, this.nowMs);
    this.counters[C_HANDLED]!++;
    try {
      this.handler.onPacket(buf.subarray(off, off + len), this.flowOf(f));
    } catch (err) {
      this.drops[DROP_HANDLER_ERROR]!++;
      this.lastHandlerError = err;
    }
    if (this.view !== null) this.view.id = -1;
  }

  /** Sends `payload` to flow `f`'s client from the front socket it came in on. */
  reply(f: number, payload: Uint8Array): void {
    const t = this.flows;
    this.replyTo(t.listenerOf(f), t.portOf(f), this.remoteAddressOf(f), payload);
  }

  replyTo(listener: number, port: number, address: string, payload: Uint8Array): void {
    const s = this.fronts[listener];
    if (!s) { this.counters[C_REPLY_ERRORS]!++; return; }
    this.counters[C_REPLIES]!++;
    this.counters[C_REPLY_BYTES]! += payload.length;
    s.send(payload, port, address, this.onReplySent);
  }

  private readonly onReplySent = (err: Error | null): void => {
    if (err) this.counters[C_REPLY_ERRORS]!++;
  };

  // ---- timers: idle expiry over owned buckets only ----

  /** One sweep tick (the timer passes its interval); without an interval, a sweep of every owned bucket. */
  sweep(everyMs = Infinity): void {
    this.nowMs = performance.now();
    const B = this.config.buckets;
    const idle = this.idleTimeoutMs;
    // Every owned bucket once per idle/SWEEP_SLICES: a flow ends between 1 and 1 + 1/SWEEP_SLICES idle timeouts
    // (plus one tick) after its last packet. (A slice of B/8 per idle/8 tick took a whole idle timeout to go round:
    // flows ended up to 2 idle timeouts late.)
    const slice = idle <= 0 ? B : Math.min(B, Math.max(1, Math.ceil((B * everyMs * SWEEP_SLICES) / idle)));
    const t = this.flows;
    for (let n = 0; n < slice; n++) {
      const b = this.sweepCursor;
      this.sweepCursor = (b + 1) % B;
      if (this.owned[b] === 0) continue;
      let f = t.bucketHead[b]!;
      while (f >= 0) {
        const next = t.nextInBucket(f);
        if (this.nowMs - t.lastSeenOf(f) >= idle && this.queue.queued(f) === 0) this.endFlow(f, 'idle');
        f = next;
      }
    }
  }

  private endFlow(f: number, reason: 'idle' | 'shutdown' | 'evicted'): void {
    this.counters[C_FLOWS_EXPIRED]!++;
    const h = this.handler;
    if (this.view !== null) {
      // The view reads the table: call before the slot is freed.
      if (h.onFlowEnd) { try { h.onFlowEnd(this.flowOf(f), reason); } catch (err) { this.hookFailed(err); } }
      this.view.id = -1;
      this.flows.remove(f);
      return;
    }
    let ref = this.refs[f];
    if (ref === undefined && h.onFlowEnd) ref = this.flowOf(f) as FlowRef;
    ref?.detach();
    this.refs[f] = undefined;
    this.flows.remove(f);
    if (ref !== undefined && h.onFlowEnd) {
      try { h.onFlowEnd(ref, reason); } catch (err) { this.hookFailed(err); }
    }
  }

  // ---- migration: give a bucket away, take one in ----

  private collectFrame(_f: number, buf: Buffer, off: number, len: number): void {
    // The queue keeps payload views; the frame header sits just before the payload in the same buffer.
    this.handedOver.push(buf.subarray(off - FRAME_HEADER_BYTES, off + len));
  }

  /** The primary has sent the last packet of `bucket` to us: hand over its queued packets and flow state. */
  release(bucket: number, epoch: number): void {
    const t = this.flows;
    this.handedOver = [];
    const transfers: FlowTransfer[] = [];
    const sockets: dgram.Socket[] = [];
    let f = t.bucketHead[bucket]!;
    while (f >= 0) {
      const next = t.nextInBucket(f);
      this.queue.drainFlow(f, this.collectBound);
      let exported: ExportedFlow | undefined;
      if (this.handler.exportFlow) {
        try { exported = this.handler.exportFlow(this.flowOf(f)); } catch (err) { this.hookFailed(err); }
        if (this.view !== null) this.view.id = -1;
      }
      // The state crosses IPC as JSON: a value JSON cannot carry (a cycle, a BigInt) made the whole hand-over throw
      // after the bucket's flows were gone, and the migration waited 20 s to time out with every flow's state lost.
      let data = exported?.data ?? null;
      if (data !== null && typeof data === 'object') {
        try { JSON.stringify(data); } catch (err) { this.hookFailed(err); data = null; }
      } else if (typeof data === 'bigint' || typeof data === 'function' || typeof data === 'symbol') {
        this.hookFailed(new TypeError(`exportFlow returned ${typeof data} data, which cannot cross to another worker`));
        data = null;
      }
      let socketIndex = -1;
      if (exported?.socket !== undefined && !(exported.socket instanceof dgram.Socket)) {
        // Only a dgram socket's handle can cross; anything else failed the hand-over (ERR_INVALID_HANDLE_TYPE) and
        // held the bucket until the migration timed out.
        this.hookFailed(new TypeError(`exportFlow returned a socket that is not a dgram.Socket (${typeof exported.socket})`));
        exported = { data: exported.data };
      }
      if (exported?.socket) {
        stopReading(exported.socket);
        socketIndex = sockets.length;
        sockets.push(exported.socket);
      }
      transfers.push({
        hash: t.hashOf(f), port: t.portOf(f), family: t.familyOf(f), listener: t.listenerOf(f),
        addr: Buffer.from(t.addressOf(f)).toString('base64'), packets: t.packetsOf(f),
        idleMs: Math.max(0, this.nowMs - t.lastSeenOf(f)), data, socket: socketIndex,
      });
      if (this.view === null) { this.refs[f]?.detach(); this.refs[f] = undefined; }
      t.remove(f);
      f = next;
    }
    this.owned[bucket] = 0;
    const frames = this.handedOver.length > 0 ? Buffer.concat(this.handedOver) : Buffer.alloc(0);
    this.handedOver = [];
    send({ t: 'released', bucket, epoch, flows: transfers, frames: frames.toString('base64'), sockets: sockets.length });
    sockets.forEach((s, index) => {
      process.send!({ t: 'released-socket', bucket, epoch, index } satisfies WorkerToPrimary, s as never, () => {
        try { s.close(); } catch { /* already closed */ }
      });
    });
  }

  private pendingImport: { bucket: number; epoch: number; flows: FlowTransfer[]; sockets: (dgram.Socket | null)[]; left: number; late: boolean } | null = null;

  onImport(m: Extract<PrimaryToWorker, { t: 'import' }>): void {
    this.pendingImport = { bucket: m.bucket, epoch: m.epoch, flows: m.flows, sockets: new Array(m.sockets).fill(null), left: m.sockets, late: m.late === true };
    if (m.sockets === 0) this.finishImport();
  }

  onImportSocket(m: Extract<PrimaryToWorker, { t: 'import-socket' }>, socket: dgram.Socket | undefined): void {
    const p = this.pendingImport;
    if (!p || p.bucket !== m.bucket || p.epoch !== m.epoch || !socket) {
      try { socket?.close(); } catch { /* ignore */ }
      return;
    }
    // Nothing may read it until its flow is imported (the kernel keeps the datagrams meanwhile).
    stopReading(socket);
    p.sockets[m.index] = socket;
    if (--p.left === 0) this.finishImport();
  }

  private finishImport(): void {
    const p = this.pendingImport!;
    this.pendingImport = null;
    const t = this.flows;
    // A late import (its migration had timed out) only fills in flows of a bucket this worker owns now.
    const accept = !p.late || this.owned[p.bucket] === 1;
    let imported = 0, skipped = 0;
    for (const x of p.flows) {
      const socket = x.socket >= 0 ? p.sockets[x.socket] ?? undefined : undefined;
      if (!accept) { skipped++; try { socket?.close(); } catch { /* ignore */ } continue; }
      const addr = Buffer.from(x.addr, 'base64');
      const size = t.size;
      const idleMs = typeof x.idleMs === 'number' && x.idleMs > 0 ? x.idleMs : 0;
      const f = t.insertKey(x.hash, x.port, x.family, x.listener, addr, p.bucket, this.nowMs - idleMs);
      if (f < 0) { this.drops[DROP_FLOW_TABLE_FULL]!++; try { socket?.close(); } catch { /* ignore */ } continue; }
      // Already here (started afresh after a timeout): its newer state stays.
      if (t.size === size) { skipped++; try { socket?.close(); } catch { /* ignore */ } continue; }
      t.setPackets(f, x.packets);
      if (socket) startReading(socket);
      this.startFlow(f, { data: x.data, socket });
      this.counters[C_FLOWS_CREATED]!--; // moved, not created
      imported++;
    }
    if (!p.late) this.owned[p.bucket] = 1;
    send({ t: 'imported', bucket: p.bucket, epoch: p.epoch, imported, skipped });
  }

  /**
   * Packet mode: gives back up to `max` queued packets, heaviest flows first (claim: queued events are taken
   * from the overloaded thread's queue and placed on other threads' queues). The flows stay; only queued work moves.
   */
  shed(max: number): void {
    this.handedOver = [];
    let taken = 0;
    while (taken < max && this.queue.depth > 0) {
      const f = this.queue.heaviestFlow();
      if (f < 0) break;
      // At most what was asked: the whole queue of one heavy flow overloaded the worker it went to, which shed it
      // back (18,500 packets shed for 4,500 received).
      taken += this.queue.drainFlow(f, this.collectBound, max - taken);
    }
    if (taken === 0) return;
    const frames = Buffer.concat(this.handedOver);
    this.handedOver = [];
    send({ t: 'shed-frames', frames: frames.toString('base64'), packets: taken });
  }

  // ---- reporting ----

  snapshotCounters(): WorkerCounters {
    const c = this.counters;
    return {
      rxPackets: c[C_RX_PACKETS]!, rxBytes: c[C_RX_BYTES]!, handled: c[C_HANDLED]!, replies: c[C_REPLIES]!,
      replyBytes: c[C_REPLY_BYTES]!, replyErrors: c[C_REPLY_ERRORS]!, flowsCreated: c[C_FLOWS_CREATED]!,
      flowsExpired: c[C_FLOWS_EXPIRED]!, flowsActive: this.flows.size, handlerCrashes: this.handlerCrashes,
      drops: Array.from(this.drops), latencyCounts: Array.from(this.latencyCounts), latencySumMs: this.latencySumMs,
    };
  }

  /** The process that started this worker (the primary); checked while draining at shutdown. */
  private readonly parentPid = process.ppid;

  async shutdown(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    // Serve what is queued (within the shutdown timeout: a deep queue of expensive packets would otherwise keep a
    // stopping worker busy for minutes), end every flow, close the handler. An orphan (the primary died: our parent
    // changed) stops at once: its late replies would only reach whatever now uses the clients' ports, and nobody
    // counts them.
    const until = performance.now() + Math.max(SHUTDOWN_DRAIN_MIN_MS, this.config.shutdownTimeoutMs * SHUTDOWN_DRAIN_SHARE);
    while (this.queue.depth > 0 && performance.now() < until && process.ppid === this.parentPid) this.queue.serve(DRAIN_BUDGET, this.serveBound);
    if (this.queue.depth > 0) this.log.warn('stopping with packets still queued: not served', { packets: this.queue.depth });
    const t = this.flows;
    for (let b = 0; b < this.config.buckets; b++) {
      let f = t.bucketHead[b]!;
      while (f >= 0) { const next = t.nextInBucket(f); this.endFlow(f, 'shutdown'); f = next; }
    }
    try { await this.handler.close?.(); } catch (err) { this.log.warn('handler close failed', { err }); }
  }
}

const C_RX_PACKETS = 0, C_RX_BYTES = 1, C_HANDLED = 2, C_REPLIES = 3, C_REPLY_BYTES = 4, C_REPLY_ERRORS = 5;
const C_FLOWS_CREATED = 6, C_FLOWS_EXPIRED = 7;

function send(m: WorkerToPrimary): void {
  if (process.connected) process.send!(m);
}

/** Entry point of a worker process (called from worker-main). */
export async function runWorker(): Promise<void> {
  const config = JSON.parse(process.env.FLOWLB_CONFIG ?? 'null') as FlowlbConfig;
  const workerId = Number(process.env.FLOWLB_WORKER_ID ?? '0');
  const log = createLogger(config.logLevel, { role: 'worker', worker: workerId });
  // IPC messages that arrive while no listener is attached are lost (front socket handles among them), so
  // listen at once and replay what came in while the handler was starting.
  // A front socket is send-only here (the primary reads it) but reads from the moment its handle arrives: this
  // listener, first and for the whole life of the worker, stops it in that same tick. Stopped only once the handler
  // had loaded, it took datagrams meant for the primary meanwhile and dropped them uncounted (300 of 480 sent while
  // a replacement loaded a handler for 1.5 s).
  process.on('message', (m: unknown, h: unknown) => {
    if (h !== undefined && isFlowlbMessage(m) && (m as PrimaryToWorker).t === 'front') stopReading(h as dgram.Socket);
  });
  const early: [unknown, unknown][] = [];
  const buffer = (m: unknown, h: unknown): void => { early.push([m, h]); };
  process.on('message', buffer);
  send({ t: 'hello' });
  // A worker stuck in a handler never sees its primary die; this thread does (see orphan-watchdog.ts).
  if (startOrphanWatchdog({ everyMs: ORPHAN_CHECK_MS, graceMs: ORPHAN_GRACE_MS }) === null) log.warn('orphan watchdog thread did not start');
  let ctx: HandlerContext = {
    workerId, workers: config.workers, buckets: config.buckets, idleTimeoutMs: config.idleTimeoutMs,
    backends: config.backends, options: config.handlerOptions, log,
  };
  let handler: FlowHandler;
  try {
    handler = await instantiateHandler(await loadHandlerFactory(config.handler), ctx);
  } catch (err) {
    send({ t: 'fatal', message: err instanceof Error ? err.message : String(err) });
    process.exitCode = 1;
    setTimeout(() => process.exit(1), 100).unref();
    return;
  }
  const rt = new WorkerRuntime(config, workerId, handler, log);

  // A handler that throws from its own callbacks (timers, socket events) must not take the worker down.
  // Counted and logged like the hooks' exceptions: at most one line every HANDLER_LOG_EVERY_MS (a handler timer that
  // threw on every packet wrote 200 lines a second).
  process.on('uncaughtException', (err) => { rt.hookFailed(err); });

  const channel = new net.Socket({ fd: 4, readable: true, writable: false });
  channel.on('data', (chunk: Buffer) => rt.onChunk(chunk));
  channel.on('error', (err) => log.warn('channel error', { err }));
  channel.on('end', () => { void stop(); });

  let fronts = 0;
  const onMessage = (m: unknown, handle: unknown): void => {
    if (!isFlowlbMessage(m)) return;
    const msg = m as PrimaryToWorker;
    switch (msg.t) {
      case 'front': {
        const s = handle as dgram.Socket | undefined;
        if (s === undefined) break; // the primary closed the socket before its handle crossed (stopping while we start)
        // Not read here: the first 'message' listener stopped it on arrival.
        s.on('error', (err) => log.warn('front socket error', { err }));
        rt.fronts[msg.listener] = s;
        rt.frontPorts[msg.listener] = s.address().port;
        if (++fronts === config.listen.length) send({ t: 'ready', pid: process.pid });
        break;
      }
      case 'own':
        for (const b of msg.add) rt.owned[b] = 1;
        for (const b of msg.remove) rt.owned[b] = 0;
        break;
      case 'import':
        rt.onImport(msg);
        break;
      case 'shed':
        rt.shed(msg.packets);
        break;
      case 'import-socket':
        rt.onImportSocket(msg, handle as dgram.Socket | undefined);
        break;
      case 'reconfigure': {
        const c = msg.config as {
          backends: HandlerContext['backends']; idleTimeoutMs: number; options: HandlerContext['options'];
          queue?: { flowQueueLimit: number; quantumBytes: number };
        };
        rt.idleTimeoutMs = c.idleTimeoutMs;
        // The queue's storage (its capacity, 4 x queueLimit at start) is fixed; its per-flow limit and quantum are not.
        if (c.queue !== undefined) { rt.queue.flowLimit = c.queue.flowQueueLimit; rt.queue.quantum = c.queue.quantumBytes; }
        ctx = { ...ctx, backends: c.backends, idleTimeoutMs: c.idleTimeoutMs, options: c.options };
        try {
          handler.reconfigure?.(ctx);
        } catch (err) { log.warn('handler reconfigure failed', { err }); }
        break;
      }
      case 'shutdown':
        // The channel's end (every packet read) normally stops us first; this covers a channel that never ends.
        setTimeout(() => { void stop(); }, 1000).unref();
        break;
    }
  };
  process.off('message', buffer);
  process.on('message', onMessage);
  for (const [m, h] of early) onMessage(m, h);

  const sweepEveryMs = Math.max(50, Math.min(1000, Math.floor(config.idleTimeoutMs / (SWEEP_SLICES * SWEEP_SLICES))));
  const sweepTimer = setInterval(() => rt.sweep(sweepEveryMs), sweepEveryMs);

  // RSS comes from /proc/self/stat, which needs a descriptor: out of them (a proxy holds a socket per flow) it throws
  // EMFILE, and the whole report was lost with it. Keep the last value instead.
  let lastRss = 0;
  const readRss = (): number => { try { return (lastRss = process.memoryUsage.rss()); } catch { return lastRss; } };
  const cpuLimit = new CpuLimitReader();
  const sched = new SchedStatReader();
  sched.sample(performance.now());
  let seq = 0;
  let lastWall = performance.now();
  let lastCpu = process.cpuUsage();
  let lastElu = performance.eventLoopUtilization();
  // Handler exceptions are counted per packet but logged from here, at most every HANDLER_LOG_EVERY_MS: the
  // handler's author sees what threw without a log line per packet.
  let handlerLoggedAt = -Infinity, handlerErrorsLogged = 0;
  const reportTimer = setInterval(() => {
    const now = performance.now();
    if (rt.lastHandlerError !== undefined && now - handlerLoggedAt >= HANDLER_LOG_EVERY_MS) {
      const total = rt.drops[DROP_HANDLER_ERROR]! + rt.handlerCrashes;
      log.warn('exception in the handler, isolated (counted as handler_error drops or handler crashes)', { err: rt.lastHandlerError, sinceLastLog: total - handlerErrorsLogged });
      handlerErrorsLogged = total;
      handlerLoggedAt = now;
      rt.lastHandlerError = undefined;
    }
    const cpu = process.cpuUsage();
    const elu = performance.eventLoopUtilization();
    const wallUs = (now - lastWall) * 1000;
    const cpuUtil = wallUs > 0 ? (cpu.user - lastCpu.user + cpu.system - lastCpu.system) / wallUs : 0;
    const eluNow = performance.eventLoopUtilization(elu, lastElu).utilization;
    const { run: schedRun, wait: schedWait } = sched.sample(now);
    const handlerCounters = (handler as { counters?: () => Record<string, number> }).counters?.();
    const counters = rt.snapshotCounters();
    if (handlerCounters) {
      for (const [key, reason] of HANDLER_DROPS) {
        const x = handlerCounters[key];
        if (typeof x === 'number' && x > 0) counters.drops[reason]! += x;
      }
    }
    send({
      t: 'report', seq: seq++, intervalMs: now - lastWall, cpuUtil, elu: eluNow, queueDepth: rt.queue.depth,
      peakQueueDepth: rt.queue.takePeakDepth(), activeQueues: rt.queue.activeFlows(), counters,
      memRss: readRss(), cpuUs: cpu.user + cpu.system, cpuLimit: cpuLimit.read(), schedRun, schedWait, schedWaitUs: sched.waitUs, handlerCounters,
    });
    lastWall = now; lastCpu = cpu; lastElu = elu;
  }, config.balancer.reportIntervalMs);

  let stopping = false;
  async function stop(): Promise<void> {
    if (stopping) return;
    stopping = true;
    clearInterval(sweepTimer);
    clearInterval(reportTimer);
    sched.close();
    await rt.shutdown();
    // Let queued replies leave before the process ends.
    setImmediate(() => {
      for (const s of rt.fronts) try { s?.close(); } catch { /* closed */ }
      channel.destroy();
      process.disconnect?.();
      process.exit(0);
    });
  }
  // The primary going away (disconnect) ends the worker too: no orphans.
  process.on('disconnect', () => { void stop(); });
  // Signals reach the whole process group on Ctrl-C (SIGINT) and on a hangup or `kill -HUP -- -PGID` (SIGHUP, whose
  // default action killed every worker while the primary reloaded); the primary coordinates shutdown and reloads.
  process.on('SIGINT', () => {});
  process.on('SIGHUP', () => {});
  process.on('SIGTERM', () => { void stop(); });
}
