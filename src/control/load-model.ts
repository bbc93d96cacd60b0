/**
 * The load model: smoothed measurements the balancer decides on. Workers report every ~100 ms (--report-interval); one report is
 * too noisy to move buckets on (a GC pause or one burst looks like overload), so every figure here is an
 * exponentially weighted moving average, x <- alpha * sample + (1 - alpha) * x, updated once per report.
 *
 * Units (every array is indexed by worker slot or by bucket, sized at construction):
 *   cpuUtil          process CPU time / wall time of the report interval. 1 = one full core. May exceed 1
 *                    slightly (GC and libuv threads run beside the event loop).
 *   elu              event-loop utilisation, 0..1: the fraction of wall time the loop was not idle waiting
 *                    for I/O. Wall time, so it also counts time the thread was runnable but descheduled.
 *   queueDepth       packets queued inside the worker at report time.
 *   packetsPerSec    packets handled per second of wall time (sum over the worker's reported buckets).
 *   bucket rates     packets/s and bytes/s per bucket.
 *   handledPerSec    packets the worker's handler processed per second (what its CPU was spent on).
 *   bucket load      "fraction of a core": the CPU one bucket's traffic DEMANDS, estimated as
 *                    bucketPps(b) * costPerPacket(w), with costPerPacket(w) = cpuUtil(w) / handledPerSec(w),
 *                    w being the worker that last reported b. bucketPps counts packets dispatched to the
 *                    bucket (arrivals, counted by the primary), so for a worker that keeps up the loads add
 *                    up to its cpuUtil; for a saturated worker (arrivals > handled, its queue grows) they add
 *                    up to more than the core it has: its true demand, which CPU alone cannot show (CPU caps
 *                    at what the worker gets). CPU time per packet is a property of the traffic, not of how
 *                    much CPU the worker gets, so this stays right when a worker is starved by another
 *                    process on its core. A worker's baseline cost (timers, GC) is spread over its buckets
 *                    in proportion to their packets; with no packets it is attributed to nobody. Demand is
 *                    capped at MAX_DEMAND_RATIO x cpuUtil (a worker that handles next to nothing, e.g.
 *                    blocked, would otherwise read as infinitely loaded).
 *
 * Bucket rates stay with the bucket, not the worker: when a bucket moves, the new owner's reports continue
 * its average (its flows are the same flows). A bucket not in a report from the worker that last reported
 * it gets a zero sample, so a bucket that goes quiet decays. While a bucket migrates both workers may
 * report packets for it; each report is a partial sample, so its rate is briefly underestimated.
 */

import type { WorkerLoad } from './imbalance.js';

export type { WorkerLoad };

/** `bucketReporter` value of a bucket no live report covers (never seen, or its worker was reset). */
export const NO_REPORTER = 0xffff;

/** The slow cpu/elu averages (imbalance index) weigh a report SLOW_DIVISOR times less than the fast ones. */
export const SLOW_DIVISOR = 3;

/** A worker's demand (arrivals x cost per packet) is counted as at most this many times its CPU. */
export const MAX_DEMAND_RATIO = 8;

/** The per-report input: what a worker measured over the last `intervalMs` of wall time. */
export interface WorkerReport {
  /** Process CPU time / wall time over the interval (1 = one core). */
  readonly cpuUtil: number;
  /** Event-loop utilisation over the interval, 0..1. */
  readonly elu: number;
  /** Packets queued in the worker at report time. */
  readonly queueDepth: number;
  /** Wall time the counts cover, in ms. */
  readonly intervalMs: number;
  /** Buckets with traffic since the last report; the three arrays are parallel. */
  readonly bucketIds: ArrayLike<number>;
  /** Packets per bucket since the last report. */
  readonly bucketPackets: ArrayLike<number>;
  /** Bytes per bucket since the last report. */
  readonly bucketBytes: ArrayLike<number>;
  /**
   * Packets the worker's handler processed since the last report. Absent: taken as equal to the bucket
   * packets (arrivals), i.e. the worker keeps up.
   */
  readonly handledPackets?: number;
  /** The worker's cgroup CPU quota in cores (see cpu-limit.ts); absent or 0 = none. */
  readonly cpuLimit?: number;
}

function finiteOrZero(x: number): number {
  return Number.isFinite(x) && x > 0 ? x : 0;
}

export class LoadModel {
  readonly workers: number;
  readonly buckets: number;
  /** Weight of the newest report, (0, 1]. 0.3 at 100 ms reports: a step change is ~90% visible in ~0.65 s. */
  readonly alpha: number;

  /** Per worker: EWMA of cpuUtil (cores). */
  readonly cpuUtil: Float64Array;
  /** Per worker: EWMA of elu (0..1). */
  readonly elu: Float64Array;
  /**
   * Per worker: cpuUtil and elu averaged SLOW_DIVISOR times slower (weight alpha / SLOW_DIVISOR per report, ~1 s
   * at 100 ms reports), for the imbalance index only. The index is a ratio of the two (contention), and over
   * 100-300 ms a worker that is throttled (a cgroup CPU limit) or shares its core reads a ratio that jumps by
   * +-0.15 from one report to the next; on the fast averages the target shares swung +-8% every half second and buckets moved back and forth.
   * Contention changes on a scale of seconds; the loads the planner compares with the targets stay fast.
   */
  readonly cpuSlow: Float64Array;
  readonly eluSlow: Float64Array;
  /** Per worker: its cgroup CPU quota in cores as of its latest report (not averaged); 0 = none. */
  readonly cpuLimit: Float64Array;
  /** Per worker: EWMA of queue depth (packets). */
  readonly queueDepth: Float64Array;
  /** Per worker: the queue depth of the last report, unsmoothed (packets). */
  readonly lastQueueDepth: Float64Array;
  /** Per worker: EWMA of packets/s. */
  readonly packetsPerSec: Float64Array;
  /** Per worker: EWMA of packets processed per second (-1: never reported, arrivals stand in). */
  readonly handledPerSec: Float64Array;
  /** Per worker: reports ingested since construction or the last reset. */
  readonly reports: Uint32Array;

  /** Per bucket: EWMA of packets/s. */
  readonly bucketPacketsPerSec: Float64Array;
  /** Per bucket: EWMA of bytes/s. */
  readonly bucketBytesPerSec: Float64Array;
  /** Per bucket: the worker whose reports last covered it, or NO_REPORTER. */
  readonly bucketReporter: Uint16Array;

  /** Report entries skipped because the bucket id was out of range or a count was not a finite number. */
  rejectedEntries = 0;

  /** Per bucket: sequence number of the last report that listed it (to find the ones a report left out). */
  private readonly bucketStamp: Uint32Array;
  private stamp = 0;
  /** Scratch for `bucketLoads`: per worker, the sum of its buckets' packet rates. */
  private readonly sumPps: Float64Array;
  /** Scratch for `bucketLoads`: per worker, CPU per processed packet (core-seconds). */
  private readonly costPerPacket: Float64Array;

  constructor(workers: number, buckets: number, alpha: number) {
    if (!Number.isInteger(workers) || workers < 1 || workers >= NO_REPORTER) {
      throw new RangeError(`workers must be an integer in [1, ${NO_REPORTER - 1}], got ${workers}`);
    }
    if (!Number.isInteger(buckets) || buckets < 1) {
      throw new RangeError(`buckets must be a positive integer, got ${buckets}`);
    }
    if (!(alpha > 0 && alpha <= 1)) throw new RangeError(`alpha must be in (0, 1], got ${alpha}`);
    this.workers = workers;
    this.buckets = buckets;
    this.alpha = alpha;
    this.cpuUtil = new Float64Array(workers);
    this.elu = new Float64Array(workers);
    this.cpuSlow = new Float64Array(workers);
    this.eluSlow = new Float64Array(workers);
    this.cpuLimit = new Float64Array(workers);
    this.queueDepth = new Float64Array(workers);
    this.lastQueueDepth = new Float64Array(workers);
    this.packetsPerSec = new Float64Array(workers);
    this.handledPerSec = new Float64Array(workers).fill(-1);
    this.reports = new Uint32Array(workers);
    this.bucketPacketsPerSec = new Float64Array(buckets);
    this.bucketBytesPerSec = new Float64Array(buckets);
    this.bucketReporter = new Uint16Array(buckets).fill(NO_REPORTER);
    this.bucketStamp = new Uint32Array(buckets);
    this.sumPps = new Float64Array(workers);
    this.costPerPacket = new Float64Array(workers);
  }

  /**
   * Folds one report into the averages. Returns false (and changes nothing) when the report cannot be a
   * rate: a non-positive or non-finite interval. Bad entries inside a report are skipped and counted in
   * `rejectedEntries`; a worker bug must not take the primary down.
   */
  ingestReport(worker: number, r: WorkerReport): boolean {
    this.checkWorker(worker);
    if (!(Number.isFinite(r.intervalMs) && r.intervalMs > 0)) return false;
    const a = this.alpha;
    // The first report of a slot sets the averages outright: starting from 0 would read as an idle worker
    // for the first second and attract buckets it cannot take.
    const keep = this.reports[worker] === 0 ? 0 : 1 - a;
    const take = this.reports[worker] === 0 ? 1 : a;
    const perSec = 1000 / r.intervalMs;

    this.cpuUtil[worker] = take * finiteOrZero(r.cpuUtil) + keep * this.cpuUtil[worker]!;
    this.elu[worker] = take * Math.min(1, finiteOrZero(r.elu)) + keep * this.elu[worker]!;
    const slow = this.reports[worker] === 0 ? 1 : a / SLOW_DIVISOR;
    this.cpuSlow[worker] = slow * finiteOrZero(r.cpuUtil) + (1 - slow) * this.cpuSlow[worker]!;
    this.eluSlow[worker] = slow * Math.min(1, finiteOrZero(r.elu)) + (1 - slow) * this.eluSlow[worker]!;
    this.cpuLimit[worker] = finiteOrZero(r.cpuLimit ?? 0);
    const q = finiteOrZero(r.queueDepth);
    this.lastQueueDepth[worker] = q;
    this.queueDepth[worker] = take * q + keep * this.queueDepth[worker]!;

    // Stamp 0 means "never"; skip it when the counter wraps.
    this.stamp = this.stamp === 0xffffffff ? 1 : this.stamp + 1;
    const stamp = this.stamp;
    let packets = 0;
    const n = Math.min(r.bucketIds.length, r.bucketPackets.length, r.bucketBytes.length);
    if (n < Math.max(r.bucketIds.length, r.bucketPackets.length, r.bucketBytes.length)) {
      this.rejectedEntries += Math.max(r.bucketIds.length, r.bucketPackets.length, r.bucketBytes.length) - n;
    }
    for (let i = 0; i < n; i++) {
      const b = r.bucketIds[i]!;
      const p = r.bucketPackets[i]!;
      const by = r.bucketBytes[i]!;
      if (!Number.isInteger(b) || b < 0 || b >= this.buckets || !(p >= 0) || !(by >= 0) || !Number.isFinite(p + by)) {
        this.rejectedEntries++;
        continue;
      }
      // Bucket averages always start from 0 (the true prior for a bucket never seen) so that the sum of a
      // worker's bucket rates tracks its total; only the share of each bucket matters for its load.
      this.bucketPacketsPerSec[b] = a * p * perSec + (1 - a) * this.bucketPacketsPerSec[b]!;
      this.bucketBytesPerSec[b] = a * by * perSec + (1 - a) * this.bucketBytesPerSec[b]!;
      this.bucketReporter[b] = worker;
      this.bucketStamp[b] = stamp;
      packets += p;
    }
    // Buckets this worker covered before but left out now had no traffic: a zero sample.
    for (let b = 0; b < this.buckets; b++) {
      if (this.bucketReporter[b] === worker && this.bucketStamp[b] !== stamp) {
        this.bucketPacketsPerSec[b]! *= 1 - a;
        this.bucketBytesPerSec[b]! *= 1 - a;
      }
    }
    this.packetsPerSec[worker] = take * packets * perSec + keep * this.packetsPerSec[worker]!;
    const h = r.handledPackets;
    if (h !== undefined && Number.isFinite(h) && h >= 0) {
      this.handledPerSec[worker] = this.handledPerSec[worker]! < 0 ? h * perSec : take * h * perSec + keep * this.handledPerSec[worker]!;
    }
    this.reports[worker]!++;
    return true;
  }

  /**
   * Restarts a worker's slow averages at its fast ones: the balancer saw a step (see Balancer.computeIndexes), so
   * the slow averages' history is of a situation that has ended. Without it the slow index trailed the step for
   * ~1 s, and the moment the fast one was no longer far enough below it the index jumped back up towards it.
   */
  snapSlow(worker: number): void {
    this.checkWorker(worker);
    this.restartAt(worker, this.cpuUtil[worker]!, this.elu[worker]!);
  }

  /**
   * Restarts a worker's cpu and elu averages, fast and slow, at the given level: the balancer saw a step in the
   * worker's own reports (see Balancer.watchStep) and these are the reports after it; snapSlow restarts them at
   * the fast averages.
   */
  restartAt(worker: number, cpuUtil: number, elu: number): void {
    this.checkWorker(worker);
    this.cpuUtil[worker] = this.cpuSlow[worker] = finiteOrZero(cpuUtil);
    this.elu[worker] = this.eluSlow[worker] = Math.min(1, finiteOrZero(elu));
  }

  /**
   * Forgets a worker slot (crash, replacement): its averages restart from its replacement's first report.
   * The rates of the buckets it reported restart from 0 too: their new owners' reports rebuild them within
   * a few intervals, and a stale rate that nobody reports would never decay.
   */
  resetWorker(worker: number): void {
    this.checkWorker(worker);
    this.cpuUtil[worker] = 0;
    this.elu[worker] = 0;
    this.cpuSlow[worker] = 0;
    this.eluSlow[worker] = 0;
    this.queueDepth[worker] = 0;
    this.cpuLimit[worker] = 0;
    this.lastQueueDepth[worker] = 0;
    this.packetsPerSec[worker] = 0;
    this.handledPerSec[worker] = -1;
    this.reports[worker] = 0;
    for (let b = 0; b < this.buckets; b++) {
      if (this.bucketReporter[b] === worker) {
        this.bucketReporter[b] = NO_REPORTER;
        this.bucketPacketsPerSec[b] = 0;
        this.bucketBytesPerSec[b] = 0;
      }
    }
  }

  /**
   * Estimated load of every bucket in fractions of a core (see the file comment). Writes into `out` when
   * given (length >= buckets) so a tick allocates nothing. A bucket no live report covers has load 0.
   */
  bucketLoads(out: Float64Array = new Float64Array(this.buckets)): Float64Array {
    if (out.length < this.buckets) throw new RangeError(`out has ${out.length} slots, need ${this.buckets}`);
    // Cost per packet of each worker = cpu / packets it processed; a bucket's load = its arrivals x that cost.
    // Without a handled figure the arrivals stand in (then a worker's bucket loads add up to its cpuUtil).
    const sumPps = this.sumPps, cost = this.costPerPacket;
    sumPps.fill(0);
    for (let b = 0; b < this.buckets; b++) {
      const w = this.bucketReporter[b]!;
      if (w !== NO_REPORTER) sumPps[w]! += this.bucketPacketsPerSec[b]!;
    }
    for (let w = 0; w < this.workers; w++) {
      const arrivals = sumPps[w]!, handled = this.handledPerSec[w]!;
      // Processed rate, never below arrivals / MAX_DEMAND_RATIO (caps the demand at that multiple of the CPU).
      const served = handled < 0 ? arrivals : Math.max(handled, arrivals / MAX_DEMAND_RATIO);
      cost[w] = served > 0 ? this.cpuUtil[w]! / served : 0;
    }
    for (let b = 0; b < this.buckets; b++) {
      const w = this.bucketReporter[b]!;
      out[b] = w === NO_REPORTER ? 0 : cost[w]! * this.bucketPacketsPerSec[b]!;
    }
    return out;
  }

  /** The smoothed view of one worker; `alive` comes from the caller (the model does not track processes). */
  workerLoad(worker: number, alive: boolean): WorkerLoad {
    this.checkWorker(worker);
    return {
      alive,
      cpuUtil: this.cpuUtil[worker]!,
      elu: this.elu[worker]!,
      queueDepth: this.queueDepth[worker]!,
    };
  }

  /** What the imbalance index is computed from, per slot: the slow cpu and elu averages (see cpuSlow). */
  indexInputs(alive: ArrayLike<number>): WorkerLoad[] {
    return this.views(alive, this.cpuSlow, this.eluSlow);
  }

  /** `workerLoad` for every slot; `alive[w]` nonzero marks a live worker. */
  workerLoads(alive: ArrayLike<number>): WorkerLoad[] {
    return this.views(alive, this.cpuUtil, this.elu);
  }

  private views(alive: ArrayLike<number>, cpu: Float64Array, elu: Float64Array): WorkerLoad[] {
    const out: WorkerLoad[] = [];
    for (let w = 0; w < this.workers; w++) {
      out.push({ alive: alive[w] !== 0 && alive[w] !== undefined, cpuUtil: cpu[w]!, elu: elu[w]!, queueDepth: this.queueDepth[w]!, cpuLimit: this.cpuLimit[w]! });
    }
    return out;
  }

  private checkWorker(worker: number): void {
    if (!Number.isInteger(worker) || worker < 0 || worker >= this.workers) {
      throw new RangeError(`worker ${worker} out of range [0, ${this.workers})`);
    }
  }
}
