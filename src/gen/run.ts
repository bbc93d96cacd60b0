/**
 * The generator's library API: runGenerator (one run, one or several sender processes) and findMaxRate
 * (the highest offered rate that stays under a loss threshold). Benchmarks import this module from
 * dist/src/gen/run.js.
 */
import { GenError } from './errors.js';
import { flowWeights, formatDistribution, shardFlowIds, splitProportional } from './flows.js';
import { resolveGenOptions } from './options.js';
import type { GenOptions, ResolvedGenOptions } from './options.js';
import { runShardsInChildren } from './procs.js';
import { runShard } from './sender.js';
import type { ShardOutcome, ShardSpec, StopReason } from './sender.js';
import { encodeHistogram, mergeHistograms, summariseRtt } from './stats.js';
import type { RttSummary } from './stats.js';

export type { GenOptions, GenProgress, ResolvedGenOptions } from './options.js';
export type { RttSummary } from './stats.js';
export type { StopReason } from './sender.js';
export { GenError } from './errors.js';
export { mergeHistograms } from './stats.js';
// Benchmarks import everything they need from this one module.
export { startBackend } from './backend.js';
export type { BackendHandle, BackendMode, BackendOptions, BackendStats } from './backend.js';
export { parseIdentityTrailer, parseRtp, readProbe } from './packet.js';

export interface GenResult {
  target: string;
  flows: number;
  procs: number;
  srcAddrs: number;
  /** UDP payload bytes of every datagram (with RTP: 12 + RTP payload). */
  datagramBytes: number;
  rtp: boolean;
  distribution: string;
  expectReplies: boolean;
  /** Offered and achieved send rate, packets/s. */
  offeredRate: number;
  achievedRate: number;
  /**
   * True when the generator did not send what was offered (achieved < 97% of offered): the numbers then
   * describe the generator's limit, not the target's. Use more --procs or a lower rate.
   */
  generatorBound: boolean;
  /** Furthest any sender fell behind its schedule, ms (timer lateness and CPU starvation of the generator). */
  scheduleLagMaxMs: number;
  sent: number;
  /** Distinct packets that came back (0 when expectReplies is false). */
  received: number;
  /** sent - received after the drain; null when replies are not expected. */
  lost: number | null;
  lossPct: number | null;
  reordered: number;
  duplicated: number;
  /** Datagrams that were not replies to this run's probes. */
  invalid: number;
  /** Socket errors (e.g. ICMP port unreachable reported on a connected socket). */
  sendErrors: number;
  /** Send phase length (first slot to the end of the last packet's slot), ms. */
  durationMs: number;
  /** Time spent waiting for outstanding replies after the send phase, ms. */
  drainMs: number;
  stoppedBy: StopReason;
  /** Round-trip time, microseconds; null when nothing came back. */
  rtt: RttSummary | null;
  perFlowSent: { min: number; max: number };
  perFlowReceived: { min: number; max: number };
  /** Replies per backend identity trailer (see packet.ts); empty for a plain echo. */
  backends: Record<string, number>;
  /** Flows that got replies from more than one backend identity. */
  flowsOnSeveralBackends: number;
  /** The RTT histogram, HdrHistogram compressed base64: merge several with mergeHistograms(). */
  rttHistogram: string;
  startedAt: string;
  /** By flow id, only with includePerFlow. */
  flowSent?: number[];
  flowReceived?: number[];
}

/** Shares of the rate and count per sender process, in proportion to the weights of the flows each owns. */
export function planShards(opts: ResolvedGenOptions): ShardSpec[] {
  const weights = flowWeights(opts.flows, opts.distribution);
  const shares: number[] = [];
  for (let i = 0; i < opts.procs; i++) {
    let w = 0;
    for (const id of shardFlowIds(opts.flows, i, opts.procs)) w += weights[id]!;
    shares.push(w);
  }
  const total = shares.reduce((a, b) => a + b, 0);
  const counts = opts.count === null ? null : splitProportional(opts.count, shares);
  return shares.map((w, i) => ({ index: i, count: opts.procs, ratePps: (opts.ratePps * w) / total, packets: counts === null ? null : counts[i]! }));
}

/** Folds the sender processes' outcomes into one result. */
/** Below this fraction of the offered rate a run (or a findMaxRate trial) is bounded by the generator. */
export const GENERATOR_BOUND_RATIO = 0.97;

export function mergeOutcomes(opts: ResolvedGenOptions, outcomes: ShardOutcome[], startedAt: Date): GenResult {
  let sent = 0;
  let received = 0;
  let reordered = 0;
  let duplicated = 0;
  let invalid = 0;
  let sendErrors = 0;
  let flowsOnSeveralBackends = 0;
  let elapsedNs = 0;
  let drainMs = 0;
  let maxLagMs = 0;
  const backends: Record<string, number> = {};
  const flowSent = new Array<number>(opts.flows).fill(0);
  const flowReceived = new Array<number>(opts.flows).fill(0);
  const stops = new Set<StopReason>();
  for (const o of outcomes) {
    const c = o.counts;
    sent += c.sent;
    received += c.received;
    reordered += c.reordered;
    duplicated += c.duplicated;
    invalid += c.invalid;
    sendErrors += c.sendErrors;
    flowsOnSeveralBackends += c.flowsOnSeveralBackends;
    elapsedNs = Math.max(elapsedNs, o.sendElapsedNs);
    drainMs = Math.max(drainMs, o.drainMs);
    maxLagMs = Math.max(maxLagMs, o.maxLagMs);
    for (const [name, k] of Object.entries(c.backends)) backends[name] = (backends[name] ?? 0) + k;
    c.flowIds.forEach((id, k) => {
      flowSent[id] = c.flowSent[k]!;
      flowReceived[id] = c.flowReceived[k]!;
    });
    stops.add(o.stoppedBy);
  }
  const hist = mergeHistograms(outcomes.map((o) => o.counts.rttHistogram));
  const lost = opts.expectReplies ? sent - received : null;
  const minMax = (a: number[]): { min: number; max: number } => {
    let min = Infinity;
    let max = 0;
    for (const x of a) {
      if (x < min) min = x;
      if (x > max) max = x;
    }
    return { min: a.length ? min : 0, max };
  };
  const stoppedBy: StopReason = stops.has('abort') ? 'abort' : stops.has('timeout') ? 'timeout' : stops.has('duration') ? 'duration' : 'count';
  const achievedRate = elapsedNs > 0 ? Math.round((sent / (elapsedNs / 1e9)) * 10) / 10 : 0;
  const result: GenResult = {
    target: opts.targetText,
    flows: opts.flows,
    procs: opts.procs,
    srcAddrs: opts.srcAddrs,
    datagramBytes: opts.datagramBytes,
    rtp: opts.rtp,
    distribution: formatDistribution(opts.distribution),
    expectReplies: opts.expectReplies,
    offeredRate: opts.ratePps,
    achievedRate,
    // Below 100 packets the achieved rate is mostly start-up time (--count 10 was flagged as generator-bound).
    generatorBound: stoppedBy !== 'abort' && sent >= 100 && achievedRate < opts.ratePps * GENERATOR_BOUND_RATIO,
    scheduleLagMaxMs: Math.round(maxLagMs * 1000) / 1000,
    sent,
    received,
    lost,
    lossPct: lost === null ? null : sent > 0 ? (lost / sent) * 100 : 0,
    reordered,
    duplicated,
    invalid,
    sendErrors,
    durationMs: Math.round(elapsedNs / 1e3) / 1e3,
    drainMs: Math.round(drainMs * 1000) / 1000,
    stoppedBy,
    rtt: summariseRtt(hist),
    perFlowSent: minMax(flowSent),
    perFlowReceived: minMax(flowReceived),
    backends,
    flowsOnSeveralBackends,
    rttHistogram: encodeHistogram(hist),
    startedAt: startedAt.toISOString(),
  };
  if (opts.includePerFlow) {
    result.flowSent = flowSent;
    result.flowReceived = flowReceived;
  }
  return result;
}

/** One run of the generator. Resolves when the send phase and the drain are over and every socket is closed. */
export async function runGenerator(options: GenOptions): Promise<GenResult> {
  const opts = resolveGenOptions(options);
  const specs = planShards(opts);
  const startedAt = new Date();
  const progress = options.onProgress;
  const onProgress = progress ? (sent: number, received: number, elapsedMs: number) => progress({ sent, received, elapsedMs }) : undefined;
  let outcomes: ShardOutcome[];
  if (opts.procs === 1) {
    outcomes = [
      await runShard(opts, specs[0]!, {
        ...(options.signal ? { signal: options.signal } : {}),
        ...(onProgress ? { onProgress, progressIntervalMs: opts.progressIntervalMs } : {}),
      }),
    ];
  } else {
    outcomes = await runShardsInChildren(opts, specs, {
      ...(options.signal ? { signal: options.signal } : {}),
      ...(onProgress ? { onProgress } : {}),
    });
  }
  return mergeOutcomes(opts, outcomes, startedAt);
}

export interface FindMaxOptions {
  /** A trial passes when its loss is at most this percentage. Default 0.1. */
  lossPct?: number;
  /** ... and it achieved at least this fraction of the offered rate (else the generator is the limit). Default 0.97. */
  minAchievedRatio?: number;
  /** First offered rate; it doubles while trials pass. Default 1000. */
  startRate?: number;
  /** Highest rate tried. Default 1,000,000. */
  maxRate?: number;
  /** Lowest rate tried when the start rate already fails. Default 10. */
  minRate?: number;
  /** Length of one trial's send phase. Default 2000. */
  trialMs?: number;
  /** Trials at most. Default 12. */
  maxTrials?: number;
  /** Stop bisecting when (fail - pass) / pass is below this. Default 0.05. */
  precision?: number;
  /** Pause between trials so queues empty. Default 250 ms. */
  pauseMs?: number;
  onTrial?: (t: TrialRecord) => void;
  signal?: AbortSignal;
}

export interface TrialRecord {
  ratePps: number;
  achievedRate: number;
  lossPct: number | null;
  passed: boolean;
  /** Why a trial failed: loss above the threshold, or the generator did not reach the offered rate. */
  failedOn: 'loss' | 'generator' | null;
  rttP99Us: number | null;
}

export interface FindMaxResult {
  /** Highest offered rate that passed (0 if none did). */
  rate: number;
  /** The result of that trial (null if none passed). */
  result: GenResult | null;
  trials: TrialRecord[];
  /** What bounded the answer: the first failing trial's reason, or the search's own limits. */
  limitedBy: 'loss' | 'generator' | 'maxRate' | 'maxTrials';
}

/**
 * Steps the offered rate up (doubling) until a trial fails, then bisects between the last pass and the
 * first fail. Each trial is a fresh runGenerator (new sockets, new runId, so a trial never counts another's
 * late replies). Bounded by maxTrials, so it takes at most maxTrials x (trialMs + drain + pauseMs).
 */
export async function findMaxRate(opts: GenOptions, search: FindMaxOptions = {}): Promise<FindMaxResult> {
  const lossLimit = search.lossPct ?? 0.1;
  const minRatio = search.minAchievedRatio ?? GENERATOR_BOUND_RATIO;
  const maxRate = search.maxRate ?? 1_000_000;
  const minRate = search.minRate ?? 10;
  const trialMs = search.trialMs ?? 2000;
  const maxTrials = search.maxTrials ?? 12;
  const precision = search.precision ?? 0.05;
  const pauseMs = search.pauseMs ?? 250;
  if (!(maxRate >= minRate && minRate > 0)) throw new GenError('ERR_GEN_OPTION', `findMaxRate: need 0 < minRate <= maxRate, got ${minRate}, ${maxRate}`);
  const trials: TrialRecord[] = [];
  let best: GenResult | null = null;
  let lo = 0; // highest passing rate
  let hi = Infinity; // lowest failing rate
  let firstFail: TrialRecord['failedOn'] = null;

  const trial = async (rate: number): Promise<boolean> => {
    if (trials.length > 0 && pauseMs > 0) await new Promise((r) => setTimeout(r, pauseMs));
    const { count: _count, ...rest } = opts;
    const r = await runGenerator({ ...rest, ratePps: rate, durationMs: trialMs });
    const lossOk = r.lossPct === null || r.lossPct <= lossLimit;
    const rateOk = r.achievedRate >= rate * minRatio;
    const rec: TrialRecord = {
      ratePps: rate,
      achievedRate: r.achievedRate,
      lossPct: r.lossPct,
      passed: lossOk && rateOk,
      failedOn: !rateOk ? 'generator' : !lossOk ? 'loss' : null,
      rttP99Us: r.rtt?.p99 ?? null,
    };
    trials.push(rec);
    search.onTrial?.(rec);
    if (rec.passed) {
      if (rate > lo) {
        lo = rate;
        best = r;
      }
    } else if (rate < hi) {
      hi = rate;
      firstFail = rec.failedOn;
    }
    return rec.passed;
  };
  const stopped = (): boolean => trials.length >= maxTrials || search.signal?.aborted === true;

  // Phase 1: find a bracket [lo pass, hi fail].
  let rate = Math.min(Math.max(search.startRate ?? 1000, minRate), maxRate);
  while (!stopped()) {
    const passed = await trial(rate);
    if (passed) {
      if (rate >= maxRate) return { rate: lo, result: best, trials, limitedBy: 'maxRate' };
      if (hi !== Infinity) break;
      rate = Math.min(rate * 2, maxRate);
    } else {
      if (lo > 0) break;
      if (rate <= minRate) return { rate: 0, result: null, trials, limitedBy: firstFail ?? 'loss' };
      rate = Math.max(rate / 2, minRate);
    }
  }
  // Phase 2: bisect.
  while (!stopped() && lo > 0 && hi !== Infinity && (hi - lo) / lo > precision) {
    await trial(Math.round((lo + hi) / 2));
  }
  const converged = lo > 0 && hi !== Infinity && (hi - lo) / lo <= precision;
  return { rate: lo, result: best, trials, limitedBy: converged || !stopped() ? (firstFail ?? 'loss') : 'maxTrials' };
}
