/**
 * The queuing model inside a worker: packets queue per flow and are served by deficit round robin (DRR,
 * Shreedhar & Varghese) with a byte quantum, so one heavy flow cannot delay the others by more than its
 * turn. Storage is fixed at start: a pool of packet descriptors (a view into a received batch buffer:
 * buffer, offset, length) linked into per-flow FIFOs, and a ring of flows that have packets queued.
 *
 * Overload policy: a flow may queue at most `flowLimit` packets (beyond: drop the new packet); when the
 * whole queue is at `capacity`, the flow with the most packets queued loses its oldest packet, so under
 * overload the heaviest flows lose packets first.
 */

const NIL = -1;

/** A flow's record in FairQueue.q: packets queued, FIFO head and tail descriptors, DRR deficit, in the ring, turn open. */
const QS = 8;
const Q_COUNT = 0, Q_HEAD = 1, Q_TAIL = 2, Q_DEFICIT = 3, Q_IN_RING = 4, Q_TURN_OPEN = 5;

/**
 * What a packet costs in DRR, in bytes: its length plus a fixed charge. Handling a UDP datagram costs mostly
 * per packet, not per byte (the reply send alone is several microseconds), so pure byte accounting would let a
 * flow of tiny datagrams take hundreds of packets per turn (1500 / 4 bytes). With the charge, a turn is a few
 * small packets or one large one.
 */
export const PACKET_COST_BYTES = 300;
/** Ring entries looked at to find a new push-out candidate when the tracked one emptied. */
const HEAVY_SCAN = 64;

export type ServeFn = (flow: number, buf: Buffer, off: number, len: number) => void;

export const ENQ_OK = 0;
export const ENQ_FLOW_FULL = 1;
/** Accepted, but the heaviest flow lost its oldest packet to make room. */
export const ENQ_PUSHED_OUT = 2;
export const ENQ_FULL = 3;

export class FairQueue {
  readonly capacity: number;
  /** Changeable at run time (a reload): the next enqueue and the next turn use the new value. */
  flowLimit: number;
  quantum: number;
  /** Packets queued. */
  depth = 0;
  /** Highest depth seen since the last call to takePeakDepth(). */
  peakDepth = 0;
  /** The descriptor the last accepted enqueue used (for `sample`). */
  lastEnqueued = NIL;
  /**
   * A packet being timed (its descriptor; -1: none): `sampleServed` turns true when serve() hands it out. A packet
   * that leaves otherwise (pushed out, drained by a migration or a shed) ends the sample untimed.
   */
  sample = NIL;
  sampleServed = false;

  private readonly pBuf: (Buffer | null)[];
  private readonly pOff: Int32Array;
  private readonly pLen: Int32Array;
  private readonly pNext: Int32Array;
  private freeHead: number;

  /** Per flow, one 32-byte record (see Q_*): the fields a packet touches share a cache line. */
  private readonly q: Int32Array;
  private readonly ring: Int32Array;
  private ringHead = 0;
  private ringLen = 0;
  private heavy = NIL;

  constructor(capacity: number, maxFlows: number, flowLimit: number, quantumBytes: number) {
    this.capacity = capacity;
    this.flowLimit = flowLimit;
    this.quantum = quantumBytes;
    this.pBuf = new Array<Buffer | null>(capacity).fill(null);
    this.pOff = new Int32Array(capacity);
    this.pLen = new Int32Array(capacity);
    this.pNext = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.pNext[i] = i + 1 < capacity ? i + 1 : NIL;
    this.freeHead = capacity > 0 ? 0 : NIL;
    this.q = new Int32Array(maxFlows * QS);
    for (let f = 0; f < maxFlows; f++) { this.q[f * QS + Q_HEAD] = NIL; this.q[f * QS + Q_TAIL] = NIL; }
    this.ring = new Int32Array(maxFlows);
  }

  /** Queues a packet of `flow`. Returns ENQ_* (ENQ_FLOW_FULL and ENQ_FULL mean this packet was dropped). */
  enqueue(flow: number, buf: Buffer, off: number, len: number): number {
    const q = this.q, r = flow * QS;
    if (q[r + Q_COUNT]! >= this.flowLimit) return ENQ_FLOW_FULL;
    let result = ENQ_OK;
    if (this.freeHead === NIL) {
      const victim = this.heaviest();
      if (victim === NIL || victim === flow && q[r + Q_COUNT]! === 0 || this.q[victim * QS + Q_COUNT]! <= q[r + Q_COUNT]!) return ENQ_FULL;
      this.dropHead(victim);
      result = ENQ_PUSHED_OUT;
    }
    const p = this.freeHead;
    this.freeHead = this.pNext[p]!;
    this.pBuf[p] = buf;
    this.pOff[p] = off;
    this.pLen[p] = len;
    this.pNext[p] = NIL;
    this.lastEnqueued = p;
    const tail = q[r + Q_TAIL]!;
    if (tail === NIL) q[r + Q_HEAD] = p; else this.pNext[tail] = p;
    q[r + Q_TAIL] = p;
    const c = ++q[r + Q_COUNT]!;
    if (this.heavy === NIL || c > this.q[this.heavy * QS + Q_COUNT]!) this.heavy = flow;
    if (++this.depth > this.peakDepth) this.peakDepth = this.depth;
    if (q[r + Q_IN_RING] === 0) {
      q[r + Q_IN_RING] = 1;
      q[r + Q_TURN_OPEN] = 0;
      q[r + Q_DEFICIT] = 0;
      this.ring[(this.ringHead + this.ringLen) % this.ring.length] = flow;
      this.ringLen++;
    }
    return result;
  }

  /**
   * A flow with the most packets queued, to push out when the queue is full. O(1) while the tracked candidate
   * (updated on every enqueue) still has packets; otherwise a bounded scan of HEAVY_SCAN ring entries from the
   * head. Approximate by design: an exact answer would walk every active flow once per packet exactly when the
   * worker is overloaded (measured: 16,000 active flows took a worker from 12k to 0.5k packets/s).
   */
  private heaviest(): number {
    const h = this.heavy;
    if (h !== NIL && this.q[h * QS + Q_COUNT]! > 0) return h;
    let best = NIL;
    const n = Math.min(this.ringLen, HEAVY_SCAN);
    for (let i = 0, r = this.ringHead; i < n; i++) {
      const f = this.ring[r]!;
      if (best === NIL || this.q[f * QS + Q_COUNT]! > this.q[best * QS + Q_COUNT]!) best = f;
      r = r + 1 === this.ring.length ? 0 : r + 1;
    }
    this.heavy = best;
    return best;
  }

  private dropHead(flow: number): void {
    const q = this.q, r = flow * QS;
    const p = q[r + Q_HEAD]!;
    q[r + Q_HEAD] = this.pNext[p]!;
    if (q[r + Q_HEAD] === NIL) q[r + Q_TAIL] = NIL;
    if (p === this.sample) this.sample = NIL;
    this.releaseDescriptor(p);
    q[r + Q_COUNT]!--;
    this.depth--;
  }

  private releaseDescriptor(p: number): void {
    this.pBuf[p] = null;
    this.pNext[p] = this.freeHead;
    this.freeHead = p;
  }

  /**
   * Serves up to `budget` packets in DRR order, calling `fn` for each. Returns how many were served.
   * A flow whose queue empties leaves the ring (its deficit resets, as DRR requires).
   */
  serve(budget: number, fn: ServeFn): number {
    let served = 0;
    const ring = this.ring, size = ring.length, q = this.q;
    while (served < budget && this.ringLen > 0) {
      const f = ring[this.ringHead]!, r = f * QS;
      if (q[r + Q_TURN_OPEN] === 0) { q[r + Q_TURN_OPEN] = 1; q[r + Q_DEFICIT]! += this.quantum; }
      while (q[r + Q_COUNT]! > 0 && served < budget) {
        const p = q[r + Q_HEAD]!;
        const len = this.pLen[p]!;
        const cost = len + PACKET_COST_BYTES;
        if (cost > q[r + Q_DEFICIT]!) break;
        q[r + Q_DEFICIT]! -= cost;
        const buf = this.pBuf[p]!, off = this.pOff[p]!;
        q[r + Q_HEAD] = this.pNext[p]!;
        if (q[r + Q_HEAD] === NIL) q[r + Q_TAIL] = NIL;
        if (p === this.sample) { this.sample = NIL; this.sampleServed = true; }
        this.releaseDescriptor(p);
        q[r + Q_COUNT]!--;
        this.depth--;
        served++;
        fn(f, buf, off, len);
      }
      if (q[r + Q_COUNT] === 0) {
        q[r + Q_IN_RING] = 0; q[r + Q_TURN_OPEN] = 0; q[r + Q_DEFICIT] = 0;
        this.ringHead = this.ringHead + 1 === size ? 0 : this.ringHead + 1;
        this.ringLen--;
      } else if (served >= budget && q[r + Q_HEAD] !== NIL && this.pLen[q[r + Q_HEAD]!]! + PACKET_COST_BYTES <= q[r + Q_DEFICIT]!) {
        // Budget ran out mid-turn: the flow keeps its turn and remaining deficit.
        break;
      } else {
        // Turn over: to the back of the ring.
        q[r + Q_TURN_OPEN] = 0;
        this.ringHead = this.ringHead + 1 === size ? 0 : this.ringHead + 1;
        ring[(this.ringHead + this.ringLen - 1) % size] = f;
      }
    }
    return served;
  }

  /**
   * Removes up to `max` queued packets of `flow` (all by default), oldest first, passing each to `fn` (migration
   * hands a flow's packets over; packet mode sheds some). A flow left without packets leaves the ring; one with
   * packets left keeps its place and deficit.
   */
  drainFlow(flow: number, fn: ServeFn, max = Infinity): number {
    const q = this.q, r = flow * QS;
    let n = 0;
    let p = q[r + Q_HEAD]!;
    while (p !== NIL && n < max) {
      const next = this.pNext[p]!;
      const buf = this.pBuf[p]!, off = this.pOff[p]!, len = this.pLen[p]!;
      if (p === this.sample) this.sample = NIL;
      this.releaseDescriptor(p);
      this.depth--;
      n++;
      fn(flow, buf, off, len);
      p = next;
    }
    q[r + Q_HEAD] = p;
    q[r + Q_COUNT]! -= n;
    if (p === NIL) {
      q[r + Q_TAIL] = NIL;
      if (q[r + Q_IN_RING] === 1) this.removeFromRing(flow);
    }
    return n;
  }

  private removeFromRing(flow: number): void {
    const size = this.ring.length;
    let w = 0;
    for (let i = 0; i < this.ringLen; i++) {
      const f = this.ring[(this.ringHead + i) % size]!;
      if (f !== flow) this.ring[(this.ringHead + w++) % size] = f;
    }
    this.ringLen = w;
    this.q[flow * QS + Q_IN_RING] = 0; this.q[flow * QS + Q_TURN_OPEN] = 0; this.q[flow * QS + Q_DEFICIT] = 0;
  }

  /** The flow with the most packets queued, or -1 when empty. */
  heaviestFlow(): number {
    return this.ringLen === 0 ? NIL : this.heaviest();
  }

  /** Packets queued for `flow`. */
  queued(flow: number): number {
    return this.q[flow * QS + Q_COUNT]!;
  }

  activeFlows(): number {
    return this.ringLen;
  }

  takePeakDepth(): number {
    const p = this.peakDepth;
    this.peakDepth = this.depth;
    return p;
  }
}
