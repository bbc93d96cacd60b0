/**
 * The primary's packet path: parse the source address, hash the 4-tuple, look up the bucket's lane, append a
 * frame to that lane's batch. Batches are flushed to each worker's channel once per event-loop turn
 * (setImmediate), so one pipe write carries every datagram Node read in that turn (up to 32 per socket).
 *
 * A lane is a worker slot (its batch goes to the worker's channel) or a hold lane (the packets of one
 * migrating bucket wait there until the new owner is ready). Nothing here knows about processes or IPC:
 * the control plane hands in sinks and drives migrations through beginHold/endHold.
 */
import { BucketTable, UNASSIGNED } from './bucket-table.js';
import {
  DROP_CHANNEL_FULL, DROP_HOLD_OVERFLOW, DROP_MALFORMED, DROP_OVERSIZE, DROP_REASON_COUNT, DROP_UNASSIGNED,
  DROP_WORKER_DOWN,
} from './counters.js';
import { countPackets, FRAME_HEADER_BYTES, MAX_FRAME_BYTES, writeClockFrame, writePacketFrame, writeReleaseFrame } from './frame.js';
import { fillTuple4, fillTuple6, HASH_SEED, parseIPv4Into, parseIPv6Into, type RawHasher } from './tuple.js';

/** What a worker's channel must offer: a net.Socket on the extra pipe does. */
export interface ChannelSink {
  write(chunk: Buffer): boolean;
  readonly writableLength: number;
}

/** Slab from which batches are cut; a batch is a contiguous view, written with one write() call. */
const SLAB_BYTES = 1 << 20;
/** A batch this large is flushed at once instead of waiting for the end of the loop turn. */
const EAGER_FLUSH_BYTES = 256 * 1024;

const HOLD_CHUNK_BYTES = 256 * 1024;

export interface DispatcherOptions {
  readonly buckets: number;
  readonly maxWorkers: number;
  /** Hold lanes available, i.e. how many buckets can be migrating at once. */
  readonly maxHolds: number;
  readonly maxDatagramBytes: number;
  readonly channelLimitBytes: number;
  /** Packets one hold lane may keep. */
  readonly holdLimit: number;
  readonly hasher: RawHasher;
}

export interface ListenerInfo {
  readonly family: 4 | 6;
  readonly address: Uint8Array; // 4 or 16 bytes
  readonly port: number;
}

export class Dispatcher {
  readonly table: BucketTable;
  readonly maxWorkers: number;
  readonly maxLanes: number;

  /** Received datagrams and bytes (every datagram the front sockets delivered). */
  rxPackets = 0;
  rxBytes = 0;
  readonly drops = new Float64Array(DROP_REASON_COUNT);
  /** Per worker lane: packets and bytes written into its channel (dispatched). */
  /**
   * Per lane, packet frames written into its current channel (since setSink): lanePackets since then plus frames
   * written whole (a shed, a migration's hand-over). What a worker that died had not read is among them.
   */
  private readonly sinkBase: Float64Array;
  private readonly sinkExtra: Float64Array;
  /**
   * Per lane, packets its current process handed back (a migration's hand-over, a packet-mode shed), in all and
   * as of its latest report: written into its channel but neither lost with it nor served by it.
   */
  private readonly sinkReturned: Float64Array;
  private readonly returnedAtReport: Float64Array;
  readonly lanePackets: Float64Array;
  readonly laneBytes: Float64Array;
  /** Per bucket: packets and bytes since the control plane last took them (load estimates). */
  readonly bucketPackets: Float64Array;
  readonly bucketBytes: Float64Array;
  /** Per worker lane: batches (pipe writes). */
  readonly laneBatches: Float64Array;
  /**
   * Packet mode only: lane -> lane its packets go to instead (-1: none). Set by the control plane while a
   * worker is overloaded; stateless traffic needs no affinity, so new work skips the overloaded worker.
   */
  readonly spillTo: Int16Array;
  /** Packets redirected by spillTo. */
  spilledPackets = 0;

  private readonly sinks: (ChannelSink | null)[];
  private readonly slabs: Buffer[];
  private readonly batchStart: Int32Array;
  private readonly batchEnd: Int32Array;
  private readonly batchPackets: Int32Array;
  /** Bytes the sink had buffered at its last flush; checked per packet instead of calling a getter. */
  private readonly sinkBacklog: Float64Array;

  private readonly holdChunks: Buffer[][];
  private readonly holdFill: Int32Array;
  private readonly holdCount: Int32Array;
  private readonly holdBytes: Float64Array;
  private readonly holdInUse: Uint8Array;

  private readonly scratch4 = new Uint8Array(12);
  private readonly scratch6 = new Uint8Array(36);
  /** The frame's 16-byte address field is copied from here; cleared once so IPv4 leaves zeros in the tail. */
  private readonly addr16 = new Uint8Array(16);
  private listenerFamily: Uint8Array = new Uint8Array(0);
  private listenerPort: Uint16Array = new Uint16Array(0);
  private listenerAddr: Uint8Array[] = [];

  private readonly hasher: RawHasher;
  private readonly maxDatagramBytes: number;
  private channelLimitBytes: number;
  private holdLimit: number;
  private flushScheduled = false;

  private readonly flushBound: () => void;

  constructor(opts: DispatcherOptions) {
    this.table = new BucketTable(opts.buckets);
    this.maxWorkers = opts.maxWorkers;
    this.maxLanes = opts.maxWorkers + opts.maxHolds;
    if (this.maxLanes >= UNASSIGNED) throw new RangeError('too many lanes');
    this.hasher = opts.hasher;
    this.maxDatagramBytes = Math.min(opts.maxDatagramBytes, MAX_FRAME_BYTES - FRAME_HEADER_BYTES);
    this.channelLimitBytes = opts.channelLimitBytes;
    this.holdLimit = opts.holdLimit;
    const w = opts.maxWorkers;
    this.lanePackets = new Float64Array(w);
    this.sinkBase = new Float64Array(w);
    this.sinkExtra = new Float64Array(w);
    this.sinkReturned = new Float64Array(w);
    this.returnedAtReport = new Float64Array(w);
    this.laneBytes = new Float64Array(w);
    this.laneBatches = new Float64Array(w);
    this.spillTo = new Int16Array(w).fill(-1);
    this.bucketPackets = new Float64Array(opts.buckets);
    this.bucketBytes = new Float64Array(opts.buckets);
    this.sinks = new Array<ChannelSink | null>(w).fill(null);
    this.slabs = [];
    for (let i = 0; i < w; i++) this.slabs.push(Buffer.allocUnsafe(SLAB_BYTES));
    this.batchStart = new Int32Array(w);
    this.batchEnd = new Int32Array(w);
    this.batchPackets = new Int32Array(w);
    this.sinkBacklog = new Float64Array(w);
    this.holdChunks = [];
    for (let i = 0; i < opts.maxHolds; i++) this.holdChunks.push([]);
    this.holdFill = new Int32Array(opts.maxHolds);
    this.holdCount = new Int32Array(opts.maxHolds);
    this.holdBytes = new Float64Array(opts.maxHolds);
    this.holdInUse = new Uint8Array(opts.maxHolds);
    this.flushBound = this.flushAll.bind(this);
  }

  /** Reload: new limits apply from the next packet. */
  setLimits(channelLimitBytes: number, holdLimit: number): void {
    this.channelLimitBytes = channelLimitBytes;
    this.holdLimit = holdLimit;
  }

  setListeners(listeners: readonly ListenerInfo[]): void {
    this.listenerFamily = new Uint8Array(listeners.length);
    this.listenerPort = new Uint16Array(listeners.length);
    this.listenerAddr = [];
    listeners.forEach((l, i) => {
      this.listenerFamily[i] = l.family;
      this.listenerPort[i] = l.port;
      this.listenerAddr.push(l.address);
    });
  }

  setSink(lane: number, sink: ChannelSink | null): void {
    this.sinks[lane] = sink;
    this.sinkBase[lane] = this.lanePackets[lane]!;
    this.sinkExtra[lane] = 0;
    this.sinkReturned[lane] = 0;
    this.returnedAtReport[lane] = 0;
    this.batchStart[lane] = this.batchEnd[lane] = 0;
    this.batchPackets[lane] = 0;
    this.sinkBacklog[lane] = 0;
  }

  /** Packet frames written into lane's current channel (see sinkBase). */
  packetsIntoSink(lane: number): number {
    return this.lanePackets[lane]! - this.sinkBase[lane]! + this.sinkExtra[lane]!;
  }

  /** Lane's process handed `packets` back (control path: a hand-over, a shed). */
  returnedFrom(lane: number, packets: number): void {
    if (lane >= 0 && lane < this.sinkReturned.length) this.sinkReturned[lane]! += packets;
  }

  /** A report from lane's process arrived: what it handed back so far is in that report's counters. */
  markReport(lane: number): void {
    this.returnedAtReport[lane] = this.sinkReturned[lane]!;
  }

  /** Packets lane's process handed back after its latest report. */
  returnedSinceReport(lane: number): number {
    return this.sinkReturned[lane]! - this.returnedAtReport[lane]!;
  }

  hasSink(lane: number): boolean {
    return this.sinks[lane] !== null;
  }

  /**
   * The packet path. `family` is rinfo.family ('IPv4' | 'IPv6'). Never throws for bad input: it counts a drop.
   */
  dispatch(listener: number, msg: Buffer, address: string, family: string, port: number): void {
    const len = msg.length;
    this.rxPackets++;
    this.rxBytes += len;
    if (len > this.maxDatagramBytes) { this.drops[DROP_OVERSIZE]!++; return; }
    const a = this.addr16;
    let hash: number;
    let fam: number;
    if (family === 'IPv4') {
      const s = this.scratch4;
      if (!parseIPv4Into(address, s, 0)) { this.drops[DROP_MALFORMED]!++; return; }
      fillTuple4(s, port, this.listenerAddr[listener]!, this.listenerPort[listener]!);
      hash = this.hasher(s, HASH_SEED) >>> 0;
      a[0] = s[0]!; a[1] = s[1]!; a[2] = s[2]!; a[3] = s[3]!;
      fam = 4;
    } else {
      const s = this.scratch6;
      if (!parseIPv6Into(address, s, 0)) { this.drops[DROP_MALFORMED]!++; return; }
      fillTuple6(s, port, this.listenerAddr[listener]!, this.listenerPort[listener]!);
      hash = this.hasher(s, HASH_SEED) >>> 0;
      for (let i = 0; i < 16; i++) a[i] = s[i]!;
      fam = 6;
    }
    const bucket = hash & this.table.mask;
    let lane = this.table.owner[bucket]!;
    if (lane >= this.maxWorkers) {
      if (lane === UNASSIGNED) { this.drops[DROP_UNASSIGNED]!++; return; }
      this.holdPacket(lane - this.maxWorkers, fam, listener, port, bucket, hash, msg);
      return;
    }
    const spill = this.spillTo[lane]!;
    if (spill >= 0) { lane = spill; this.spilledPackets++; }
    const sink = this.sinks[lane];
    if (sink === null || sink === undefined) { this.drops[DROP_WORKER_DOWN]!++; return; }
    let end = this.batchEnd[lane]!;
    if (this.sinkBacklog[lane]! + (end - this.batchStart[lane]!) > this.channelLimitBytes) {
      this.drops[DROP_CHANNEL_FULL]!++;
      return;
    }
    let slab = this.slabs[lane]!;
    if (end + len + 2 * FRAME_HEADER_BYTES > slab.length) {
      this.flushLane(lane);
      slab = this.slabs[lane] = Buffer.allocUnsafe(SLAB_BYTES);
      end = this.batchStart[lane] = this.batchEnd[lane] = 0;
    }
    if (end === this.batchStart[lane]) {
      // First packet of a batch: stamp it, once per batch, for dispatch latency.
      end = writeClockFrame(slab, end, performance.timeOrigin + performance.now());
    }
    end = writePacketFrame(slab, end, fam, listener, port, bucket, hash, a, msg);
    this.batchEnd[lane] = end;
    this.batchPackets[lane]!++;
    this.lanePackets[lane]!++;
    this.laneBytes[lane]! += len;
    this.bucketPackets[bucket]!++;
    this.bucketBytes[bucket]! += len;
    if (end - this.batchStart[lane]! >= EAGER_FLUSH_BYTES) this.flushLane(lane);
    else if (!this.flushScheduled) { this.flushScheduled = true; setImmediate(this.flushBound); }
  }

  /**
   * Writes every pending batch to its channel. Runs once per loop turn that dispatched anything (setImmediate).
   * Holding batches over several turns to save pipe writes was tried and removed: at 45 instead of 15 packets per
   * batch the primary's CPU per packet did not drop measurably (bench/primary-cost), while a closed-loop client
   * (a request waits for its reply) paid the hold as latency.
   */
  flushAll(): void {
    this.flushScheduled = false;
    for (let lane = 0; lane < this.maxWorkers; lane++) {
      if (this.batchEnd[lane]! > this.batchStart[lane]!) this.flushLane(lane);
    }
  }

  private flushLane(lane: number): void {
    const start = this.batchStart[lane]!, end = this.batchEnd[lane]!;
    if (end === start) return;
    const sink = this.sinks[lane];
    this.batchStart[lane] = end;
    this.batchPackets[lane] = 0;
    if (sink === null || sink === undefined) return;
    sink.write(this.slabs[lane]!.subarray(start, end));
    this.laneBatches[lane]!++;
    this.sinkBacklog[lane] = sink.writableLength;
    // The written view keeps its slab alive until the write completes; start a new slab when this one is nearly used.
    if (this.slabs[lane]!.length - end < MAX_FRAME_BYTES + 2 * FRAME_HEADER_BYTES) {
      this.slabs[lane] = Buffer.allocUnsafe(SLAB_BYTES);
      this.batchStart[lane] = this.batchEnd[lane] = 0;
    }
  }

  /** Writes raw frames (already encoded, e.g. handed over by another worker) into a worker lane, in order. */
  writeFrames(lane: number, frames: Buffer): void {
    this.flushLane(lane);
    const sink = this.sinks[lane];
    if (sink === null || sink === undefined || frames.length === 0) return;
    sink.write(frames);
    this.sinkExtra[lane]! += countPackets(frames);
    this.sinkBacklog[lane] = sink.writableLength;
  }

  // ---- migration support ----

  /** Finds a free hold lane, or -1. */
  allocHold(): number {
    for (let h = 0; h < this.holdInUse.length; h++) if (this.holdInUse[h] === 0) { this.holdInUse[h] = 1; return h; }
    return -1;
  }

  /**
   * Starts holding `bucket`: its next packets wait in hold lane `hold`; a RELEASE frame follows the last packet
   * already batched for its current owner, so the owner knows when it has seen everything of the bucket.
   */
  beginHold(bucket: number, hold: number, epoch: number): number {
    const from = this.table.owner[bucket]!;
    this.releaseHold(hold);
    this.holdInUse[hold] = 1;
    this.table.owner[bucket] = this.maxWorkers + hold;
    if (from < this.maxWorkers && this.sinks[from]) {
      let slab = this.slabs[from]!;
      let end = this.batchEnd[from]!;
      if (end + FRAME_HEADER_BYTES > slab.length) {
        this.flushLane(from);
        slab = this.slabs[from] = Buffer.allocUnsafe(SLAB_BYTES);
        end = this.batchStart[from] = this.batchEnd[from] = 0;
      }
      this.batchEnd[from] = writeReleaseFrame(slab, end, bucket, epoch);
      this.flushLane(from);
    }
    return from;
  }

  /** Packets currently held in a hold lane. */
  heldPackets(hold: number): number {
    return this.holdCount[hold]!;
  }

  /**
   * Ends a hold: `before` (handed-over frames) then the held packets go to worker lane `to`, and the bucket's
   * owner becomes `to`. Everything happens synchronously, so later packets of the bucket follow in order.
   */
  endHold(bucket: number, hold: number, to: number, before: Buffer | null): void {
    this.flushLane(to);
    const sink = this.sinks[to];
    if (sink) {
      if (before !== null && before.length > 0) { sink.write(before); this.sinkExtra[to]! += countPackets(before); }
      const chunks = this.holdChunks[hold]!;
      for (let i = 0; i < chunks.length; i++) {
        const c = chunks[i]!;
        const fill = i === chunks.length - 1 ? this.holdFill[hold]! : c.length;
        if (fill > 0) sink.write(i === chunks.length - 1 ? c.subarray(0, fill) : c);
      }
      this.lanePackets[to]! += this.holdCount[hold]!;
      this.laneBytes[to]! += this.holdBytes[hold]!;
      this.sinkBacklog[to] = sink.writableLength;
    } else {
      this.drops[DROP_WORKER_DOWN]! += this.holdCount[hold]!;
    }
    this.table.owner[bucket] = to;
    this.releaseHold(hold);
  }

  /** Ends a hold with nobody to give it to: the held packets are dropped under `reason`; the bucket is unassigned. */
  discardHold(bucket: number, hold: number, reason: number): void {
    this.drops[reason]! += this.holdCount[hold]!;
    this.table.owner[bucket] = UNASSIGNED;
    this.releaseHold(hold);
  }

  private releaseHold(hold: number): void {
    this.holdChunks[hold]!.length = 0;
    this.holdFill[hold] = 0;
    this.holdCount[hold] = 0;
    this.holdBytes[hold] = 0;
    this.holdInUse[hold] = 0;
  }

  private holdPacket(hold: number, fam: number, listener: number, port: number, bucket: number, hash: number, msg: Buffer): void {
    if (this.holdCount[hold]! >= this.holdLimit) { this.drops[DROP_HOLD_OVERFLOW]!++; return; }
    const chunks = this.holdChunks[hold]!;
    const need = FRAME_HEADER_BYTES + msg.length;
    let cur = chunks.length > 0 ? chunks[chunks.length - 1]! : null;
    let fill = this.holdFill[hold]!;
    if (cur === null || fill + need > cur.length) {
      if (cur !== null) chunks[chunks.length - 1] = cur.subarray(0, fill);
      cur = Buffer.allocUnsafe(Math.max(HOLD_CHUNK_BYTES, need));
      chunks.push(cur);
      fill = 0;
    }
    this.holdFill[hold] = writePacketFrame(cur, fill, fam, listener, port, bucket, hash, this.addr16, msg);
    this.holdCount[hold]!++;
    this.holdBytes[hold]! += msg.length;
    this.bucketPackets[bucket]!++;
    this.bucketBytes[bucket]! += msg.length;
  }

  /** Total dropped packets, all reasons. */
  droppedTotal(): number {
    let s = 0;
    for (let i = 0; i < this.drops.length; i++) s += this.drops[i]!;
    return s;
  }

  /** Packets written to channels plus packets waiting in batches or holds. Conservation: rx = dispatched + held + dropped. */
  heldTotal(): number {
    let s = 0;
    for (let h = 0; h < this.holdCount.length; h++) s += this.holdCount[h]!;
    return s;
  }
}
