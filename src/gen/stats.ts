/**
 * Per-flow send and receive accounting of one sender process, and the merge of several into one result.
 *
 * Definitions (all per flow, summed over flows):
 * - received: distinct sequence numbers that came back;
 * - duplicated: replies whose sequence number had already come back (exact: one bit per sent packet);
 * - reordered: first arrivals of a sequence number lower than the highest already seen (RFC 4737's
 *   "reordered": it arrived after a packet sent later);
 * - lost: sent - received once the drain wait is over (a reply later than that counts as lost);
 * - invalid: datagrams that carry no probe of this run or a flow/sequence this run never sent.
 * RTT is recorded once per distinct reply, in whole microseconds.
 */
import hdr from 'hdr-histogram-js';
import type { Histogram } from 'hdr-histogram-js';
import { identityTrailerBytes, isProbe, probeFlowId, probeSendTimeNs, probeSeq } from './packet.js';

/** 1 us .. 60 s at 3 significant digits: about 0.1% error, a few tens of KB. */
export const RTT_HISTOGRAM = { lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: 3 } as const;

/** Initial per-flow bitmap of seen sequence numbers: 2048 packets; it doubles as a flow's sequence grows. */
const INITIAL_BITMAP_WORDS = 64;

export function newRttHistogram(): Histogram {
  return hdr.build({ ...RTT_HISTOGRAM });
}

export function encodeHistogram(h: Histogram): string {
  return hdr.encodeIntoCompressedBase64(h);
}

/** Adds encoded histograms (one per sender process, or per run) into one fresh histogram. */
export function mergeHistograms(encoded: readonly string[]): Histogram {
  const total = newRttHistogram();
  for (const e of encoded) {
    if (e.length === 0) continue;
    const h = hdr.decodeFromCompressedBase64(e);
    total.add(h);
  }
  return total;
}

export interface RttSummary {
  count: number;
  min: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

/** Percentiles in microseconds, or null when nothing was recorded. */
export function summariseRtt(h: Histogram): RttSummary | null {
  if (h.totalCount === 0) return null;
  return {
    count: h.totalCount,
    min: h.minNonZeroValue === Number.MAX_SAFE_INTEGER ? 0 : h.minNonZeroValue,
    mean: Math.round(h.mean * 10) / 10,
    p50: h.getValueAtPercentile(50),
    p90: h.getValueAtPercentile(90),
    p99: h.getValueAtPercentile(99),
    p999: h.getValueAtPercentile(99.9),
    max: h.maxValue,
  };
}

/** What one sender process measured; plain data so it crosses process boundaries as JSON. */
export interface ShardCounts {
  sent: number;
  received: number;
  reordered: number;
  duplicated: number;
  invalid: number;
  sendErrors: number;
  /** Global flow ids of this process's flows, and per flow what was sent and received (same order). */
  flowIds: number[];
  flowSent: number[];
  flowReceived: number[];
  /** Replies per backend identity (from the trailer); replies without one are not counted here. */
  backends: Record<string, number>;
  /** Flows whose replies came from more than one backend identity (a broken flow affinity). */
  flowsOnSeveralBackends: number;
  /** Encoded RTT histogram (microseconds). */
  rttHistogram: string;
}

/** Receive-side state of one sender process: typed arrays indexed by the flow's local index. */
export class FlowStats {
  readonly flowIds: Uint32Array;
  readonly sent: Uint32Array;
  readonly received: Uint32Array;
  readonly rtt: Histogram;
  reordered = 0;
  duplicated = 0;
  invalid = 0;
  sendErrors = 0;
  totalSent = 0;
  totalReceived = 0;
  flowsOnSeveralBackends = 0;
  /** Highest sequence number seen per flow, -1 before the first reply. */
  private readonly highest: Float64Array;
  private readonly seen: Array<Uint32Array | undefined>;
  private readonly localOf: (flowId: number) => number;
  private readonly probeOff: number;
  private readonly runId: number;
  private readonly backendIndex = new Map<string, number>();
  private readonly backendCounts: number[] = [];
  private readonly backendNames: string[] = [];
  /** Per flow: index+1 of the backend of its last reply (0: none yet), and whether it has changed. */
  private readonly lastBackend: Uint16Array;
  private readonly switched: Uint8Array;

  constructor(flowIds: Uint32Array, shardIndex: number, shardCount: number, probeOff: number, runId: number) {
    const n = flowIds.length;
    this.flowIds = flowIds;
    this.sent = new Uint32Array(n);
    this.received = new Uint32Array(n);
    this.highest = new Float64Array(n).fill(-1);
    this.seen = new Array<Uint32Array | undefined>(n);
    this.lastBackend = new Uint16Array(n);
    this.switched = new Uint8Array(n);
    this.rtt = newRttHistogram();
    this.probeOff = probeOff;
    this.runId = runId;
    // Flows are interleaved over processes (see shardFlowIds), so the local index is arithmetic.
    this.localOf = (flowId) => (flowId % shardCount === shardIndex ? (flowId - shardIndex) / shardCount : -1);
  }

  /** Accounts one datagram that arrived on a flow socket, at `nowNs` (process.hrtime.bigint()). */
  onReply(msg: Buffer, nowNs: bigint): void {
    const off = this.probeOff;
    if (!isProbe(msg, off, this.runId)) {
      this.invalid++;
      return;
    }
    const local = this.localOf(probeFlowId(msg, off));
    const seq = probeSeq(msg, off);
    if (local < 0 || local >= this.sent.length || seq >= this.sent[local]!) {
      this.invalid++;
      return;
    }
    let bits = this.seen[local];
    const word = seq >>> 5;
    if (bits === undefined || word >= bits.length) bits = this.growBitmap(local, word);
    const mask = 1 << (seq & 31);
    if ((bits[word]! & mask) !== 0) {
      this.duplicated++;
      return;
    }
    bits[word] = bits[word]! | mask;
    this.received[local] = this.received[local]! + 1;
    this.totalReceived++;
    if (seq < this.highest[local]!) this.reordered++;
    else this.highest[local] = seq;
    const rttUs = Number(nowNs - probeSendTimeNs(msg, off)) / 1000;
    this.rtt.recordValue(rttUs < RTT_HISTOGRAM.highestTrackableValue ? Math.round(rttUs) : RTT_HISTOGRAM.highestTrackableValue);
    const trailer = identityTrailerBytes(msg);
    if (trailer !== 0) this.countBackend(local, msg, trailer);
  }

  private growBitmap(local: number, word: number): Uint32Array {
    const old = this.seen[local];
    let words = old === undefined ? INITIAL_BITMAP_WORDS : old.length * 2;
    while (words <= word) words *= 2;
    const bits = new Uint32Array(words);
    if (old !== undefined) bits.set(old);
    this.seen[local] = bits;
    return bits;
  }

  private countBackend(local: number, msg: Buffer, trailer: number): void {
    const name = msg.toString('utf8', msg.length - trailer, msg.length - 5);
    let idx = this.backendIndex.get(name);
    if (idx === undefined) {
      idx = this.backendNames.length;
      this.backendIndex.set(name, idx);
      this.backendNames.push(name);
      this.backendCounts.push(0);
    }
    this.backendCounts[idx]! += 1;
    const last = this.lastBackend[local]!;
    if (last !== idx + 1) {
      if (last !== 0 && this.switched[local] === 0) {
        this.switched[local] = 1;
        this.flowsOnSeveralBackends++;
      }
      this.lastBackend[local] = idx + 1;
    }
  }

  toCounts(): ShardCounts {
    const backends: Record<string, number> = {};
    this.backendNames.forEach((name, i) => (backends[name] = this.backendCounts[i]!));
    return {
      sent: this.totalSent,
      received: this.totalReceived,
      reordered: this.reordered,
      duplicated: this.duplicated,
      invalid: this.invalid,
      sendErrors: this.sendErrors,
      flowIds: Array.from(this.flowIds),
      flowSent: Array.from(this.sent),
      flowReceived: Array.from(this.received),
      backends,
      flowsOnSeveralBackends: this.flowsOnSeveralBackends,
      rttHistogram: encodeHistogram(this.rtt),
    };
  }
}
