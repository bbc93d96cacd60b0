/**
 * The balancer: turns worker reports into bucket moves (control plane; runs on reports and ticks).
 *
 *  - every report: smoothed CPU, ELU and queue depth per worker, and per-bucket packet rates (counted by the
 *    primary's dispatcher) go into the LoadModel; a worker whose queue passed the limit is overloaded and
 *    loses buckets at once to the least-loaded workers (planOverload);
 *  - every rebalance tick: imbalance index per worker -> target shares -> greedy minimal moves (planMoves)
 *    with a dead band, a cap per round and a cooldown for workers that just received buckets;
 *  - a dead worker's buckets go at once to the survivors in proportion to their index (planEvacuation); its
 *    replacement gets its original buckets back when it is ready, and the balancer evens out from there.
 *
 * Moves are applied only through the Migrator (hold, release, import, flip), never by writing the table.
 */
import type { FlowlbConfig } from '../config.js';
import type { Dispatcher } from '../datapath/dispatcher.js';
import type { Logger } from '../log.js';
import { DROP_FLOW_QUEUE_FULL, DROP_QUEUE_FULL, DROP_WORKER_DOWN } from '../datapath/counters.js';
import { computeIndexes, effectiveCapacity, targetShares } from './imbalance.js';
import { LoadModel } from './load-model.js';
import type { Migrator } from './migrator.js';
import {
  cooldownFrom, imbalanceOf, initialAssignment, planEvacuation, planMoves, planOverload, type Move,
} from './planner.js';
import type { WorkerReportMsg, WorkerSet } from './worker-set.js';
import type { PrimaryToWorker } from './protocol.js';

/** EWMA weight of a new report. */
const ALPHA = 0.3;
/** After an overload spill, the same worker is not spilled again for this long (its queue needs time to drain). */
const OVERLOAD_COOLDOWN_MS = 300;
/** A bucket that moved stays put for this many rebalance rounds (hysteresis against noisy measurements). */
const PIN_ROUNDS = 4;
/**
 * Below this total load (cores) measurements are mostly noise (timers, GC, the report itself): the balancer
 * plans nothing. Overload spills and crash evacuation do not depend on it.
 */
const MIN_BALANCE_LOAD = 0.05;
/** A fall of the fast-averaged index this far below the slow one is a step (see computeIndexes), not noise. */
const INDEX_STEP = 0.2;
/** A rise this far is a step too (a hog left); larger than a fall, as capacity gained is less urgent than lost. */
const INDEX_STEP_UP = 0.3;
/**
 * Reports in a row whose own (unsmoothed) index is a step away from the index: the index steps then, even if
 * the fast average has not moved that far yet (see watchStep).
 */
const STEP_REPORTS = 2;
/**
 * A report is a step only if it stands out from the worker's usual report-to-index distance by this many times
 * its running mean (see watchStep).
 */
const STEP_NOISE_TIMES = 3;
/** Weight of one report in that running mean (~2 s at 100 ms reports). */
const STEP_NOISE_WEIGHT = 0.05;
/**
 * For this long after a step the index follows the fast averages. The level a step is taken at is measured
 * while the worker is still saturated (a hogged worker gets its fair half of the core, 0.48); once load has
 * left it, it is woken ahead of the hog and gets more (its cpu/elu went 0.48 -> 0.66 as its share went
 * 0.49 -> 0.40), so the first target overshoots. The slow averages took ~1.5 s to come back, the fast ones take
 * ~0.6 s.
 */
const STEP_SETTLE_MS = 2000;
/**
 * The scheduler's view of a worker (sched-stat.ts): share = run / (run + wait) of its event-loop thread. A report
 * whose share is this far above the worker's recent share (or STEP_NOISE_TIMES its usual distance, if larger)
 * says its contention fell (see watchStep). Measured with a busy loop on the worker's core, 250 ms samples:
 * 0.49-0.60 hogged (standard deviation 0.02-0.04 over a run), 0.82-0.95 free (0.04-0.13).
 */
const SCHED_STEP = 0.15;
/** ... but only in a report where the thread was runnable (on a CPU or waiting) at least this much of the time. */
const SCHED_MIN_RUNNABLE = 0.2;
/**
 * ... and only once the worker has sent this many reports (3 s at 100 ms): its usual distance (the noise limit)
 * starts at 0 and needs that long to be known. Without it, a freshly started worker under ordinary load stepped on
 * the share's report-to-report swings, and a test that waits for demand balancing took 3.5-19 s instead of 1-3 s.
 */
const SCHED_WARMUP_REPORTS = 30;
/**
 * Weight of one report in the worker's recent share (the reference a report is compared with; ~1 s at 100 ms
 * reports). At 0.3 the first report of a new level pulled the reference so far that the second one was within
 * SCHED_STEP of it (a hog left: 0.55 -> 0.79, 0.75; the second 0.135 above the moved reference).
 */
const SCHED_ALPHA = 0.1;
/** Upper bound of the noise part of the dead band (see noiseBand). */
const MAX_NOISE_BAND = 0.15;
/** The noise part of the dead band, in standard deviations of a worker's packet count (see noiseBand). */
const NOISE_SIGMAS = 2;

export class Balancer {
  readonly model: LoadModel;
  readonly indexes: Float64Array;
  private readonly fastIndexes: Float64Array;
  readonly shares: Float64Array;
  readonly bucketLoad: Float64Array;
  rounds = 0;
  overloadSpills = 0;
  /** Rounds that planned nothing: no worker busier than balancer.minBusy, or too little load in all. */
  idleRounds = 0;
  /** Packet mode: queued packets taken from overloaded workers and given to others. */
  shedPackets = 0;
  movesPlanned = 0;
  lastImbalance = 0;
  /** Times a worker's index stepped (fell by INDEX_STEP or rose by INDEX_STEP_UP at once: a hog came or went). */
  indexSteps = 0;
  /** Of those, steps over reports of which at least one counted only by the scheduler share (see watchStep). */
  indexStepsBySched = 0;
  /** Per worker: reports in a row whose own index fell a step below the index (< 0) or rose a step above it (> 0). */
  private readonly stepRun: Int32Array;
  /** Per worker: 1 if a report of the current stepRun counted only by the scheduler share. */
  private readonly runBySched: Uint8Array;
  /** Per worker: sums of cpuUtil and elu over the reports of the current stepRun. */
  private readonly runCpu: Float64Array;
  private readonly runElu: Float64Array;
  /** Per worker: running mean |own index of a report - index| (see watchStep); read by /status as stepNoise. */
  readonly reportNoise: Float64Array;
  /** Per worker: its recent scheduler share run / (run + wait), -1 before the first usable report (see watchStep). */
  readonly schedShare: Float64Array;
  /** Per worker: running mean |a report's share - schedShare|. */
  private readonly schedNoise: Float64Array;
  /** Per worker: the share of the last usable report (schedShare restarts there at a step). */
  private readonly schedLast: Float64Array;
  /** Per worker: until when (performance.now()) its index follows the fast averages (see STEP_SETTLE_MS). */
  private readonly settleUntilMs: Float64Array;
  private cooldown: Uint8Array;
  private readonly alive: Uint8Array;
  private timer: NodeJS.Timeout | null = null;
  private readonly lastSpillMs: Float64Array;
  /** Per lane: queue drops (queue_full + flow_queue_full) in the last report, to see new ones. */
  private readonly lastQueueDrops: Float64Array;
  /** Per lane: the handled counter of the last report (cumulative per worker process), -1 before the first. */
  private readonly lastHandled: Float64Array;
  private readonly homeOf: Uint16Array;
  /** bucket -> rebalance round in which it last moved. */
  private readonly movedRound: Float64Array;
  private readonly pinned: Uint8Array;
  private readonly bucketIds: number[] = [];
  private readonly bucketPkts: number[] = [];
  private readonly bucketBytes: number[] = [];

  constructor(
    private config: FlowlbConfig,
    private readonly dispatcher: Dispatcher,
    private readonly migrator: Migrator,
    private readonly workers: WorkerSet,
    private readonly log: Logger,
    private readonly sendTo: (lane: number, msg: PrimaryToWorker) => boolean = () => false,
  ) {
    const n = config.workers;
    this.model = new LoadModel(n, config.buckets, ALPHA);
    this.indexes = new Float64Array(n).fill(1);
    this.fastIndexes = new Float64Array(n).fill(1);
    this.shares = new Float64Array(n).fill(1 / n);
    this.bucketLoad = new Float64Array(config.buckets);
    this.cooldown = new Uint8Array(n);
    this.alive = new Uint8Array(n);
    this.lastSpillMs = new Float64Array(n);
    this.lastQueueDrops = new Float64Array(n);
    this.lastHandled = new Float64Array(n).fill(-1);
    this.homeOf = initialAssignment(config.buckets, n);
    this.movedRound = new Float64Array(config.buckets).fill(-Infinity);
    this.pinned = new Uint8Array(config.buckets);
    this.stepRun = new Int32Array(n);
    this.runCpu = new Float64Array(n);
    this.runBySched = new Uint8Array(n);
    this.runElu = new Float64Array(n);
    this.reportNoise = new Float64Array(n);
    this.schedShare = new Float64Array(n).fill(-1);
    this.schedNoise = new Float64Array(n);
    this.schedLast = new Float64Array(n).fill(-1);
    this.settleUntilMs = new Float64Array(n);
  }

  get enabled(): boolean {
    return this.config.balancer.enabled;
  }

  /** Equal shares at start: bucket b -> b % workers. */
  initialAssign(send: (lane: number, msg: { t: 'own'; epoch: number; add: number[]; remove: number[] }) => void): void {
    const t = this.dispatcher.table;
    const perLane: number[][] = Array.from({ length: this.config.workers }, () => []);
    for (let b = 0; b < t.buckets; b++) { t.set(b, this.homeOf[b]!); perLane[this.homeOf[b]!]!.push(b); }
    t.epoch++;
    perLane.forEach((add, lane) => {
      send(lane, { t: 'own', epoch: t.epoch, add, remove: [] });
    });
  }

  /** A reloaded config: balancer settings take effect from the next tick. */
  reconfigure(config: FlowlbConfig): void {
    const restart = this.timer !== null && config.balancer.rebalanceIntervalMs !== this.config.balancer.rebalanceIntervalMs;
    if (!this.config.balancer.enabled) this.stepRun.fill(0); // runs were not watched while it was off
    this.config = config;
    // Out of packet mode (a reload): nobody spills any more (the dispatcher follows spillTo in any mode).
    if (config.balancer.mode !== 'packet') this.dispatcher.spillTo.fill(-1);
    if (restart) { this.stop(); this.start(); }
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => this.tick(), this.config.balancer.rebalanceIntervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  private refreshAlive(): void {
    for (let i = 0; i < this.config.workers; i++) this.alive[i] = this.workers.isReady(i) ? 1 : 0;
  }

  onReport(lane: number, r: WorkerReportMsg): void {
    // Per-bucket packet counts come from the dispatcher: exact, and no per-bucket traffic on IPC.
    const d = this.dispatcher, owner = d.table.owner;
    const ids = this.bucketIds, pk = this.bucketPkts, by = this.bucketBytes;
    ids.length = pk.length = by.length = 0;
    for (let b = 0; b < owner.length; b++) {
      if (owner[b] !== lane || d.bucketPackets[b] === 0) continue;
      ids.push(b); pk.push(d.bucketPackets[b]!); by.push(d.bucketBytes[b]!);
      d.bucketPackets[b] = 0; d.bucketBytes[b] = 0;
    }
    // Packets processed since the last report: with the arrivals above, what the worker's demand is when it
    // cannot keep up (see load-model.ts). A new process starts its counter from 0.
    const handledNow = r.counters.handled, before = this.lastHandled[lane]!;
    const handled = before < 0 ? undefined : handledNow >= before ? handledNow - before : handledNow;
    this.lastHandled[lane] = handledNow;
    this.model.ingestReport(lane, {
      cpuUtil: r.cpuUtil, elu: r.elu, queueDepth: r.queueDepth, intervalMs: r.intervalMs,
      bucketIds: ids, bucketPackets: pk, bucketBytes: by, handledPackets: handled, cpuLimit: r.cpuLimit,
    });
    if (this.enabled) this.watchStep(lane, r.cpuUtil, r.elu, r.schedRun ?? -1, r.schedWait ?? -1);
    // Claim: a worker whose queue passed the set limit handles its work inefficiently; move work off it now.
    // A worker that had to drop queued packets (a flow's queue or the whole queue full) is past its limit too,
    // even if its total depth never reached queueLimit (per-flow caps drop first), and its CPU (capped at one
    // core) cannot show how far past.
    const limit = this.config.balancer.queueLimit;
    const queueDrops = (r.counters.drops[DROP_QUEUE_FULL] ?? 0) + (r.counters.drops[DROP_FLOW_QUEUE_FULL] ?? 0);
    const newQueueDrops = queueDrops - this.lastQueueDrops[lane]!;
    this.lastQueueDrops[lane] = queueDrops;
    // Packet mode handles an overloaded worker packet by packet (spill, shed); moving its buckets on top moved a
    // heavy flow's bucket back and forth between workers (4 moves in 6 s). The rounds still balance buckets.
    if (this.config.balancer.mode === 'packet') this.updatePacketSpill(lane, r.queueDepth, limit);
    else if (this.enabled && (r.queueDepth > limit || newQueueDrops > 0)) {
      const now = performance.now();
      if (now - this.lastSpillMs[lane]! >= OVERLOAD_COOLDOWN_MS) {
        this.lastSpillMs[lane] = now;
        this.spill(lane);
      }
    }
  }

  /**
   * Imbalance index per worker from the slow cpu/elu averages (see LoadModel.cpuSlow), except after a step:
   *  - STEP_REPORTS reports in a row whose own index was a step away from the index (see watchStep): every
   *    average of the worker restarts at the mean of those reports, and the index is computed from them;
   *  - the index from the fast averages more than INDEX_STEP below the slow one (a hog arrived, capacity
   *    halved) or INDEX_STEP_UP above it (it left): the fast one is taken and the slow averages restart from
   *    the fast ones.
   * Either way the level before the step is history, and the index does not wait ~2 s for the slow averages to
   * follow. Noise (+-0.15 per report under a CPU limit) stays below the step and does not reach the targets.
   */
  private computeIndexes(): void {
    computeIndexes(this.model.indexInputs(this.alive), this.indexes);
    computeIndexes(this.model.workerLoads(this.alive), this.fastIndexes);
    const now = performance.now();
    for (let w = 0; w < this.indexes.length; w++) {
      const f = this.fastIndexes[w]!, i = this.indexes[w]!, run = Math.abs(this.stepRun[w]!);
      let stepped = false;
      if (run >= STEP_REPORTS && this.alive[w] !== 0) {
        // The reports of the run are the new level: every average restarts there.
        this.model.restartAt(w, this.runCpu[w]! / run, this.runElu[w]! / run);
        if (this.schedLast[w]! >= 0) this.schedShare[w] = this.schedLast[w]!;
        if (this.runBySched[w] !== 0) this.indexStepsBySched++;
        this.fastIndexes[w] = effectiveCapacity(this.model.cpuUtil[w]!, this.model.elu[w]!, this.model.cpuLimit[w]!);
        this.stepRun[w] = 0;
        stepped = true;
      } else if (f < i - INDEX_STEP || f > i + INDEX_STEP_UP) {
        stepped = true;
      }
      if (stepped) { this.indexSteps++; this.settleUntilMs[w] = now + STEP_SETTLE_MS; }
      if (stepped || now < this.settleUntilMs[w]!) {
        this.indexes[w] = this.fastIndexes[w]!;
        this.model.snapSlow(w);
      }
    }
  }

  /**
   * Counts the reports in a row whose own index (cpu/elu of that report alone) is a step away from the worker's
   * index. A hog that arrives shows at once in the reports (elu 1.0, cpu 0.48: 0.48), but with 2-3 reports
   * between rounds the fast and the slow averages fall together and the gap between them may never reach a
   * step: seen, 0.82 -> 0.51 over 1.75 s with the gap peaking at 0.19, and 3.7 s to balance. Two reports in a
   * row rule out a single odd one (a GC pause; +-0.15 per report under a CPU limit). A rise must be
   * INDEX_STEP_UP: a hogged worker that had a lull of two reports (elu 0.44) read as uncontended (cpu/elu ~1),
   * stepped up at INDEX_STEP, took load back and saturated again (7.5 s to balance).
   *
   * Both limits grow to STEP_NOISE_TIMES the worker's running mean distance between a report and the index
   * when that is larger: a worker capped by a CFS quota at a quarter core, not saturated, reads cpu/elu
   * anywhere between 0.25 (a throttled report) and 1 (an idle one), and stepped on noise again and again
   * (58 index jumps and 236 moves in a 20 s run, against 7-12 jumps with the averages' rule alone).
   *
   * The scheduler's share (sched-stat.ts) decides a rise when it moved by a step: a report whose share rose by
   * SCHED_STEP from the worker's recent share counts towards a step up whenever its own index is above the index
   * at all. cpu/elu cannot tell a hog leaving from a lull: a hogged worker's reports read 0.48-0.80, a freed
   * one's 0.76-0.91, and its noise (3 x 0.10) held the rise for seconds; its share reads 0.49-0.60 against
   * 0.82-0.95 and moves in one report. The level stays cpu/elu's (the restart is at the reports' cpu and elu):
   * the share only says that the contention fell. Not for a fall: a hog arriving is plain in cpu/elu (elu 1, cpu
   * 0.5; stepped 0.44-0.49 s after it came without the share), and with the share deciding falls too the hogged
   * worker's raw ELU was balanced within 2 s of the hog's arrival in 5 of 19 runs against 13 of 19 without it
   * (a run's first report after the hog came covers time before it and could start the run; that this was the
   * cause is not shown). docs/balancing-bench.md, session 7.
   */
  private watchStep(lane: number, cpu: number, elu: number, schedRun: number, schedWait: number): void {
    if (this.model.reports[lane]! <= 1) {
      this.stepRun[lane] = 0; this.reportNoise[lane] = 0;
      this.schedShare[lane] = -1; this.schedNoise[lane] = 0; this.schedLast[lane] = -1;
      return;
    }
    const own = effectiveCapacity(cpu, elu, this.model.cpuLimit[lane]!), i = this.indexes[lane]!, run = this.stepRun[lane]!;
    const noise = STEP_NOISE_TIMES * this.reportNoise[lane]!;
    this.reportNoise[lane]! += STEP_NOISE_WEIGHT * (Math.abs(own - i) - this.reportNoise[lane]!);
    const down = Math.max(INDEX_STEP, noise), up = Math.max(INDEX_STEP_UP, noise);
    const rose = this.schedRose(lane, schedRun, schedWait);
    const byOwn = own < i - down ? -1 : own > i + up ? 1 : 0;
    const bySched = rose && own > i ? 1 : 0;
    const dir = byOwn !== 0 ? byOwn : bySched;
    const next = dir < 0 ? (run < 0 ? run - 1 : -1) : dir > 0 ? (run > 0 ? run + 1 : 1) : 0;
    if (Math.sign(next) !== Math.sign(run)) { this.runCpu[lane] = 0; this.runElu[lane] = 0; this.runBySched[lane] = 0; }
    if (next !== 0) { this.runCpu[lane]! += cpu; this.runElu[lane]! += Math.min(1, elu); }
    if (byOwn === 0 && bySched !== 0) this.runBySched[lane] = 1;
    this.stepRun[lane] = next;
  }

  /**
   * Folds this report's scheduler share into the worker's recent share and noise; true when it is a step above
   * the recent share (false also when the kernel does not report it, the thread was runnable too little of the
   * interval to say, or the worker is still in its warm-up).
   */
  private schedRose(lane: number, run: number, wait: number): boolean {
    if (!(run >= 0 && wait >= 0) || run + wait < SCHED_MIN_RUNNABLE) return false;
    const share = run / (run + wait), ref = this.schedShare[lane]!;
    this.schedLast[lane] = share;
    if (ref < 0) { this.schedShare[lane] = share; return false; }
    const rose = share > ref + Math.max(SCHED_STEP, STEP_NOISE_TIMES * this.schedNoise[lane]!);
    this.schedNoise[lane]! += STEP_NOISE_WEIGHT * (Math.abs(share - ref) - this.schedNoise[lane]!);
    this.schedShare[lane] = ref + SCHED_ALPHA * (share - ref);
    return rose && this.model.reports[lane]! > SCHED_WARMUP_REPORTS;
  }

  /**
   * A new process in the slot (crash, replacement): its averages restart from its first report, and a step run
   * counted on the old process's reports must not restart them at the old level on the next round.
   */
  private forget(lane: number): void {
    this.model.resetWorker(lane);
    this.stepRun[lane] = 0;
  }

  private prepare(): void {
    this.refreshAlive();
    this.computeIndexes();
    targetShares(this.indexes, this.shares);
    this.model.bucketLoads(this.bucketLoad);
  }

  /** Owners as the planner should see them: a migrating bucket counts as already at its destination. */
  private plannedOwners(): Uint16Array {
    const owners = Uint16Array.from(this.dispatcher.table.owner);
    for (let b = 0; b < owners.length; b++) if (owners[b]! >= this.config.workers) owners[b] = this.migrator.destinationOf(b);
    return owners;
  }

  private spill(lane: number): void {
    this.prepare();
    if (this.alive[lane] === 0) return;
    const moves = planOverload({
      owners: this.plannedOwners(), bucketLoad: this.bucketLoad, targetShares: this.shares, alive: this.alive,
      cooldown: new Uint8Array(this.config.workers), deadBand: this.config.balancer.deadBand,
      maxMoves: this.config.balancer.maxMovesPerRound, overloaded: lane,
    });
    if (moves.length === 0) return;
    this.overloadSpills++;
    this.log.info('overload: moving buckets off worker', { worker: lane, queueDepth: this.model.lastQueueDepth[lane], moves: moves.length });
    this.execute(moves);
  }

  tick(): void {
    // Static hashing (balancer off) computes the figures too, for /status and /metrics, and moves nothing: they
    // were computed only when a worker died, so a replacement read index 0 and share 0 for ever.
    this.prepare();
    const owners = this.plannedOwners();
    let total = 0;
    for (let b = 0; b < this.bucketLoad.length; b++) total += this.bucketLoad[b]!;
    // Idle: the decayed loads are near zero and their ratio is noise (it swung 0.0002-0.21 on an idle service).
    this.lastImbalance = total < MIN_BALANCE_LOAD ? 0 : imbalanceOf(owners, this.bucketLoad, this.shares);
    if (!this.enabled) return;
    if (this.migrator.inFlight > 0) return; // let the previous round land before measuring again
    this.rounds++;
    if (total < MIN_BALANCE_LOAD || this.busiestElu() <= this.config.balancer.minBusy) {
      this.idleRounds++;
      this.cooldown.fill(0);
      return;
    }
    for (let b = 0; b < this.pinned.length; b++) this.pinned[b] = this.rounds - this.movedRound[b]! <= PIN_ROUNDS ? 1 : 0;
    const moves = planMoves({
      owners, bucketLoad: this.bucketLoad, targetShares: this.shares, alive: this.alive, cooldown: this.cooldown,
      deadBand: Math.max(this.config.balancer.deadBand, this.noiseBand()), maxMoves: this.config.balancer.maxMovesPerRound, pinned: this.pinned,
    });
    this.cooldown = cooldownFrom(moves, this.config.workers);
    if (moves.length > 0) {
      this.log.debug('rebalance', { moves: moves.length, imbalance: this.lastImbalance });
      this.execute(moves);
    }
  }

  /**
   * The busiest live worker's event-loop utilisation (the larger of its fast and slow averages, so a step up
   * counts at once). Below `minBusy` a regular round moves nothing: no worker is near saturation, so an uneven
   * split costs next to no latency (queueing delay grows as 1/(1 - utilisation)), while every move costs a hold
   * and a state transfer, and at low utilisation the contention signal behind the index is mostly noise. Seen
   * before this gate: 4 workers at 12-15% CPU each on a shared 2-core machine, the index swung 0.3-0.9 per
   * worker and the balancer made 271 moves in 30 s (client p99 180 ms against 27 ms with --no-balance).
   * Overload spills and crash evacuation do not depend on it.
   */
  private busiestElu(): number {
    let most = 0;
    for (let w = 0; w < this.config.workers; w++) {
      if (this.alive[w] !== 0) most = Math.max(most, this.model.elu[w]!, this.model.eluSlow[w]!);
    }
    return most;
  }

  /**
   * The dead band never goes below the measurement noise. A worker's smoothed packet rate rests on a Poisson
   * count of about N = rate x interval x (2 - alpha) / alpha packets (the EWMA's equivalent window), whose
   * relative noise is 1/sqrt(N). At 100k packets/s that is nothing; at a few hundred expensive packets/s per
   * worker it is 7-10%, more than the configured 5%, and the balancer moved buckets after noise (hundreds of
   * moves a minute under a steady load). The band is NOISE_SIGMAS of it: at one sigma a worker left the band
   * by chance in ~1 round of 6, and since a worker outside its band is moved to the middle of it (planMoves),
   * each such round moved several buckets (52-74 moves per 20 s skew run; 7-17 at two sigmas, same p99).
   * Bounded by MAX_NOISE_BAND.
   */
  private noiseBand(): number {
    const windowS = (this.config.balancer.reportIntervalMs / 1000) * (2 - ALPHA) / ALPHA;
    let least = Infinity;
    for (let w = 0; w < this.config.workers; w++) {
      if (this.alive[w] !== 0) least = Math.min(least, this.model.packetsPerSec[w]! * windowS);
    }
    if (!Number.isFinite(least)) return 0;
    return Math.min(MAX_NOISE_BAND, NOISE_SIGMAS / Math.sqrt(Math.max(1, least)));
  }

  private execute(moves: readonly Move[]): void {
    for (const m of moves) {
      if (this.migrator.start(m.bucket, m.to)) { this.movedRound[m.bucket] = this.rounds; this.movesPlanned++; }
    }
  }

  /**
   * Packet mode: while a worker's queue is past the limit its new packets go to the least-loaded worker, and
   * its queued packets beyond half the limit are handed back and spread there too. Cleared below half the limit.
   */
  private updatePacketSpill(lane: number, depth: number, limit: number): void {
    const spill = this.dispatcher.spillTo;
    if (depth > limit) {
      const target = this.leastLoaded(lane);
      if (target < 0) return;
      // Only onto a worker with room (below half the limit): when every worker is past it, moving queued work
      // only moves it back and forth (seen: 7 reads per datagram, and sheds going on after the traffic stopped).
      const room = Math.floor(limit / 2 - (this.workers.lastReport(target)?.queueDepth ?? 0));
      if (room <= 0) return;
      if (spill[lane] !== target) {
        spill[lane] = target;
        // Nobody may spill onto a worker that itself spills to us.
        if (spill[target] === lane) spill[target] = -1;
      }
      this.sendTo(lane, { t: 'shed', packets: Math.min(room, Math.floor(depth - limit / 2)) });
    } else if (depth < limit / 2 && spill[lane] !== -1) {
      spill[lane] = -1;
    }
  }

  private leastLoaded(except: number): number {
    this.refreshAlive();
    let best = -1, bestDepth = Infinity;
    for (let i = 0; i < this.config.workers; i++) {
      if (i === except || this.alive[i] === 0 || this.dispatcher.spillTo[i] !== -1) continue;
      const d = this.workers.lastReport(i)?.queueDepth ?? 0;
      const score = d + this.model.cpuUtil[i]!; // queue first, CPU as the tie-break
      if (score < bestDepth) { best = i; bestDepth = score; }
    }
    return best;
  }

  /** Packets an overloaded worker handed back (packet mode): to the least-loaded worker. */
  onShed(lane: number, frames: Buffer, packets: number): void {
    this.dispatcher.returnedFrom(lane, packets);
    const target = this.dispatcher.spillTo[lane]! >= 0 ? this.dispatcher.spillTo[lane]! : this.leastLoaded(lane);
    if (target < 0 || !this.workers.isReady(target)) {
      // Nobody to take them: back to where they came from (already counted as dispatched there).
      if (this.workers.isReady(lane)) this.dispatcher.writeFrames(lane, frames);
      else this.dispatcher.drops[DROP_WORKER_DOWN]! += packets;
      return;
    }
    this.dispatcher.writeFrames(target, frames);
    this.shedPackets += packets;
  }

  onBucketMoved(_bucket: number, _to: number): void {
    // The next report from the new owner carries the bucket's packets; nothing to do until then.
  }

  onWorkerReady(lane: number): void {
    this.refreshAlive();
    if (this.workers.restarts(lane) === 0) return; // first start: initialAssign gave it its buckets
    // A replacement: give back its original buckets (with their flows' state, through migrations); the
    // balancer evens out from there. Moves beyond the free hold lanes are retried on the next ticks.
    this.forget(lane);
    this.restoreHome(lane);
  }

  private restoreHome(lane: number): void {
    const owner = this.dispatcher.table.owner;
    let pending = 0;
    for (let b = 0; b < owner.length; b++) {
      if (this.homeOf[b] !== lane || owner[b] === lane || this.migrator.isMigrating(b)) continue;
      if (!this.migrator.start(b, lane)) pending++;
    }
    if (pending > 0) setTimeout(() => { if (this.workers.isReady(lane)) this.restoreHome(lane); }, 50).unref();
  }

  onWorkerExit(lane: number): void {
    this.lastQueueDrops[lane] = 0;
    this.lastHandled[lane] = -1;
    this.refreshAlive();
    this.forget(lane);
    this.computeIndexes();
    targetShares(this.indexes, this.shares);
    const moves = planEvacuation(this.dispatcher.table.owner, lane, this.shares, this.alive);
    // The dead worker has nothing to hand over: Migrator.start gives each bucket straight to its new owner.
    for (const m of moves) this.migrator.start(m.bucket, m.to);
  }

  /** A live worker to receive `bucket` when its migration target died: the one with the lowest load. */
  pickEvacuationTarget(_bucket: number, dead: number): number {
    this.refreshAlive();
    let best = -1, bestLoad = Infinity;
    for (let i = 0; i < this.config.workers; i++) {
      if (i === dead || this.alive[i] === 0) continue;
      const l = this.model.cpuUtil[i]!;
      if (l < bestLoad) { best = i; bestLoad = l; }
    }
    return best;
  }
}
