/**
 * The imbalance index: how much of the total load each worker should carry.
 *
 * ## Formula
 *
 * For every live worker i, from its smoothed CPU utilisation cpu_i (process CPU time / wall time, 1 = one
 * core) and event-loop utilisation elu_i (0..1):
 *
 *     ratio_i     = min(1, cpu_i / elu_i)               CPU share the worker gets while it has work
 *     evidence_i  = min(1, elu_i / ELU_EVIDENCE)        how far we trust that ratio (ELU_EVIDENCE = 0.25)
 *     capacity_i  = max(MIN_CAPACITY, 1 - evidence_i * (1 - ratio_i))          (MIN_CAPACITY = 0.05)
 *     capacity_i  = min(limit_i, capacity_i)            when the worker's cgroup has a CPU quota below a core
 *     index_i     = capacity_i   (0 for a dead worker)
 *     share_i     = index_i / sum_j index_j
 *
 * The balancer then aims for worker i carrying share_i of the total bucket load (planner.ts).
 *
 * ## Why
 *
 * The index is "how much of a core this worker really gets". ELU is measured in wall time: it counts time the
 * loop had work, whether or not the thread was on a CPU. CPU time counts only time on a CPU. For an
 * uncontended worker the two grow together (cpu ~ elu at any load, so ratio ~ 1). A worker that shares its
 * core with another process is runnable but descheduled part of the time: its ELU climbs towards 1 while its
 * CPU stays at the share the scheduler gives it. Such a worker is starved, not busy; it should get less load,
 * in proportion to what it actually receives. ELU near 1 with CPU 0.5 gives capacity 0.5: half the load of
 * an uncontended peer.
 *
 * The ratio is a property of the contention, not of the load: moving load off a starved worker lowers its
 * ELU and its CPU together, so its index stays put and the target does not chase the assignment. That is
 * why the index is not spare capacity (1 - utilisation): a spare-capacity index depends on the very load the
 * balancer moves, so the target moves away from every assignment it produces (herding and oscillation), and
 * it says nothing at low load, where every worker looks idle. Load imbalance itself is measured by the
 * planner against these targets.
 *
 * At low ELU the ratio is noise (a few ms of loop time; helper threads add CPU outside the loop), so the
 * evidence term fades the correction in over ELU 0..0.25; below that a worker counts as a full core. The
 * blend is continuous, so a small change in a measurement never makes the target jump. MIN_CAPACITY keeps a
 * badly starved but live worker in the table instead of dividing by zero; the overload path (queue past its
 * limit) takes care of it if even that is too much.
 *
 * A CPU quota (cgroup CFS bandwidth: limit_i = quota / period, cpu-limit.ts) is a ceiling the ratio shows
 * only while the worker is saturated. Below that, whether a report caught the worker throttled decides what
 * it reads: 4 workers capped at a quarter core read cpu/elu anywhere between 0.25 and 1 from report to
 * report, and the balancer chased that noise. Known, the quota bounds the index from above; contention
 * beyond it (a neighbour on the same core) still shows in the ratio.
 *
 * This is the patent claim's "imbalance distribution index for each processor from its percentage of
 * capacity usage", with buckets distributed "in proportion to the index and in reverse proportion to the
 * total index" (share_i = index_i / sum index).
 *
 * Properties (tested): equal measurements give equal indexes; index is non-decreasing in cpu and
 * non-increasing in elu; never above the CPU limit; shares sum to 1 over live workers; dead workers get 0.
 */

/** One worker's smoothed measurements (see load-model.ts for how they are averaged). */
export interface WorkerLoad {
  readonly alive: boolean;
  /** Process CPU time / wall time (1 = one core). */
  readonly cpuUtil: number;
  /** Event-loop utilisation, 0..1. */
  readonly elu: number;
  /** Packets queued in the worker (smoothed). */
  readonly queueDepth: number;
  /** The worker's cgroup CPU quota in cores (its latest report); 0 or absent = none. */
  readonly cpuLimit?: number;
}

/** ELU above which cpu/elu is fully trusted as a contention measurement. */
export const ELU_EVIDENCE = 0.25;
/** Smallest index a live worker gets, in cores. */
export const MIN_CAPACITY = 0.05;

function clean(x: number): number {
  return Number.isFinite(x) && x > 0 ? x : 0;
}

/**
 * "How much of a core the worker gets", in cores, in [MIN_CAPACITY, 1], and never above `cpuLimit` (the worker's
 * cgroup CPU quota in cores; 0 = none). Pure; used by `computeIndexes`.
 */
export function effectiveCapacity(cpuUtil: number, elu: number, cpuLimit = 0): number {
  const cap = Math.min(1, clean(cpuLimit) || 1);
  const e = Math.min(1, clean(elu));
  if (e === 0) return cap;
  const ratio = Math.min(1, clean(cpuUtil) / e);
  const evidence = Math.min(1, e / ELU_EVIDENCE);
  return Math.min(cap, Math.max(MIN_CAPACITY, 1 - evidence * (1 - ratio)));
}

/** The imbalance index of every worker: its effective capacity, 0 when dead. */
export function computeIndexes(workers: readonly WorkerLoad[], out?: Float64Array): Float64Array {
  const idx = out ?? new Float64Array(workers.length);
  for (let i = 0; i < workers.length; i++) {
    const w = workers[i]!;
    idx[i] = w.alive ? effectiveCapacity(w.cpuUtil, w.elu, w.cpuLimit) : 0;
  }
  return idx;
}

/**
 * Target share of the total load per worker: index_i / sum of indexes. Sums to 1 unless every index is 0
 * (every worker dead), in which case all shares are 0. Negative or non-finite indexes count as 0.
 */
export function targetShares(indexes: ArrayLike<number>, out?: Float64Array): Float64Array {
  const n = indexes.length;
  const shares = out ?? new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) total += clean(indexes[i]!);
  for (let i = 0; i < n; i++) shares[i] = total > 0 ? clean(indexes[i]!) / total : 0;
  return shares;
}

/**
 * The worker handling its work inefficiently (claim: "its queue exceeded a predetermined criterion"): the
 * live worker with the deepest queue beyond `queueLimit` packets, or -1 if none. Ties go to the lowest slot.
 */
export function findOverloaded(workers: readonly WorkerLoad[], queueLimit: number): number {
  let worst = -1;
  let worstDepth = queueLimit;
  for (let i = 0; i < workers.length; i++) {
    const w = workers[i]!;
    if (w.alive && w.queueDepth > worstDepth) {
      worst = i;
      worstDepth = w.queueDepth;
    }
  }
  return worst;
}
