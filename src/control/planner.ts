/**
 * Bucket assignment math: which buckets move where. Pure functions over typed arrays; the caller measures
 * (load-model.ts), picks targets (imbalance.ts) and applies the moves to the data path with an epoch.
 *
 * Vocabulary. N workers, B buckets. `owners[b]` is the worker slot owning bucket b. `bucketLoad[b]` is b's
 * estimated cost in fractions of a core. A worker's load is the sum of its buckets' loads; T is the total.
 * Worker i's target is share_i * T and its deviation d_i = load_i - share_i * T (sum of d_i is 0).
 *
 * Imbalance, two ways (both exported):
 *   imbalanceOf  = max_i |d_i| / T     the worst worker's distance from its target as a fraction of all load,
 *                                      0 = perfect. The number to report and to alert on.
 *   dispersionOf = sum_i d_i^2 / T^2   what the greedy planner lowers strictly with every move, so a plan over
 *                                      fixed loads can never cycle. A move never raises imbalanceOf either.
 *
 * Moving bucket load x from donor D (d_D > 0) to receiver R (d_R < 0) changes the dispersion by
 * 2x(x - (d_D - d_R)): it improves exactly when 0 < x < d_D - d_R, and then neither worker ends further from
 * its target than the worse of the two was, so the maximum cannot rise.
 */

/** One bucket changing owner. Structurally a `BucketMove` of the bucket table, plus where it comes from. */
export interface Move {
  readonly bucket: number;
  readonly from: number;
  readonly to: number;
}

export interface PlanInput {
  /** bucket -> worker slot. Never modified. */
  readonly owners: Uint16Array;
  /** bucket -> estimated load, fractions of a core (>= 0; anything else counts as 0). */
  readonly bucketLoad: Float64Array;
  /** worker -> target share of the total load (from `targetShares`); its length is the worker count N. */
  readonly targetShares: Float64Array;
  /** worker -> nonzero when alive. */
  readonly alive: Uint8Array;
  /**
   * worker -> nonzero when it received buckets last round: it sits out as a receiver this round (its own
   * measurements do not reflect the new buckets yet). It may still give buckets away.
   */
  readonly cooldown: Uint8Array;
  /** Workers whose |d_i| is within deadBand * target_i are left alone (0.05 = within 5% of target). */
  readonly deadBand: number;
  /** Upper bound on the moves returned (balance plans and overload plans; evacuations ignore it). */
  readonly maxMoves: number;
  /**
   * bucket -> nonzero when the bucket may not move this round (it moved recently). Hysteresis: with noisy
   * measurements a bucket whose load is close to the gap it fills could otherwise bounce between two workers.
   */
  readonly pinned?: Uint8Array;
}

export interface OverloadInput extends PlanInput {
  /** The worker whose queue passed its limit (see `findOverloaded`). */
  readonly overloaded: number;
}

/** A worker a round rebalances is brought to within this fraction of its dead band (see planMoves). */
export const SETTLE_FRACTION = 0.25;

/** Below this many of T, a load difference is rounding, not imbalance. */
const REL_EPSILON = 1e-9;

function clean(x: number): number {
  return Number.isFinite(x) && x > 0 ? x : 0;
}

/** b -> b % workers: counts differ by at most one, and neighbouring buckets land on different workers. */
export function initialAssignment(buckets: number, workers: number): Uint16Array {
  if (!Number.isInteger(buckets) || buckets < 1) throw new RangeError(`buckets must be >= 1, got ${buckets}`);
  if (!Number.isInteger(workers) || workers < 1 || workers > 0xffff) {
    throw new RangeError(`workers must be in [1, 65535], got ${workers}`);
  }
  const owners = new Uint16Array(buckets);
  for (let b = 0; b < buckets; b++) owners[b] = b % workers;
  return owners;
}

/**
 * Returns a new owner table with the moves applied in order; `owners` is left untouched (the data path owns
 * its own table and applies the same moves with an epoch). Throws RangeError on a move whose `from` is not
 * the bucket's owner at that point: a plan computed against another table is stale and must not half-apply.
 */
export function applyMoves(owners: Uint16Array, moves: readonly Move[]): Uint16Array {
  const next = owners.slice();
  for (const m of moves) {
    if (!Number.isInteger(m.bucket) || m.bucket < 0 || m.bucket >= next.length) {
      throw new RangeError(`move of bucket ${m.bucket}: out of range [0, ${next.length})`);
    }
    if (next[m.bucket] !== m.from) {
      throw new RangeError(`stale move: bucket ${m.bucket} is owned by ${next[m.bucket]}, not ${m.from}`);
    }
    next[m.bucket] = m.to;
  }
  return next;
}

/** Sum of bucket loads per worker slot (cores). Buckets owned by a slot >= workers are counted nowhere. */
export function loadsByWorker(
  owners: Uint16Array,
  bucketLoad: Float64Array,
  workers: number,
  out: Float64Array = new Float64Array(workers),
): Float64Array {
  out.fill(0, 0, workers);
  for (let b = 0; b < owners.length; b++) {
    const w = owners[b]!;
    if (w < workers) out[w]! += clean(bucketLoad[b]!);
  }
  return out;
}

/** Receivers of a plan: the `cooldown` input of the next round. */
export function cooldownFrom(moves: readonly Move[], workers: number): Uint8Array {
  const cooldown = new Uint8Array(workers);
  for (const m of moves) if (m.to < workers) cooldown[m.to] = 1;
  return cooldown;
}

/** Shares normalised over the given (live) set; equal when every share there is 0. */
function normalisedShares(shares: ArrayLike<number>, live: (w: number) => boolean, n: number): Float64Array {
  const out = new Float64Array(n);
  let total = 0;
  let count = 0;
  for (let w = 0; w < n; w++) {
    if (!live(w)) continue;
    out[w] = clean(shares[w]!);
    total += out[w]!;
    count++;
  }
  for (let w = 0; w < n; w++) {
    if (!live(w)) continue;
    out[w] = total > 0 ? out[w]! / total : 1 / count;
  }
  return out;
}

function deviations(owners: Uint16Array, bucketLoad: Float64Array, targetShares: Float64Array) {
  const n = targetShares.length;
  const shares = normalisedShares(targetShares, () => true, n);
  const dev = loadsByWorker(owners, bucketLoad, n);
  let total = 0;
  for (let b = 0; b < bucketLoad.length; b++) total += clean(bucketLoad[b]!);
  for (let w = 0; w < n; w++) dev[w]! -= shares[w]! * total;
  return { dev, total };
}

/** max_i |load_i - share_i * T| / T; 0 when there is no load. Shares are normalised to sum 1 first. */
export function imbalanceOf(owners: Uint16Array, bucketLoad: Float64Array, targetShares: Float64Array): number {
  const { dev, total } = deviations(owners, bucketLoad, targetShares);
  if (total <= 0) return 0;
  let worst = 0;
  for (let w = 0; w < dev.length; w++) worst = Math.max(worst, Math.abs(dev[w]!));
  return worst / total;
}

/** sum_i (load_i - share_i * T)^2 / T^2: the quantity every balance move strictly lowers. 0 with no load. */
export function dispersionOf(owners: Uint16Array, bucketLoad: Float64Array, targetShares: Float64Array): number {
  const { dev, total } = deviations(owners, bucketLoad, targetShares);
  if (total <= 0) return 0;
  let sum = 0;
  for (let w = 0; w < dev.length; w++) sum += dev[w]! * dev[w]!;
  return sum / (total * total);
}

/**
 * Every bucket with `mustMove(owner)` goes to a survivor, counts in proportion to the survivors' weights
 * (largest remainder: each survivor gets floor or ceil of its exact quota). Buckets are dealt one at a time to
 * the survivor with the largest open fraction of its quota, so each survivor's new buckets interleave over the
 * bucket range instead of forming one block.
 */
function evacuate(
  owners: Uint16Array,
  mustMove: (owner: number) => boolean,
  weights: ArrayLike<number>,
  survivor: (w: number) => boolean,
  n: number,
): Move[] {
  const orphans: number[] = [];
  for (let b = 0; b < owners.length; b++) if (mustMove(owners[b]!)) orphans.push(b);
  const survivors: number[] = [];
  for (let w = 0; w < n; w++) if (survivor(w)) survivors.push(w);
  if (orphans.length === 0 || survivors.length === 0) return [];

  const shares = normalisedShares(weights, survivor, n);
  const quota = new Float64Array(n);
  const remainders: { w: number; r: number }[] = [];
  let dealt = 0;
  for (const w of survivors) {
    const exact = orphans.length * shares[w]!;
    quota[w] = Math.floor(exact);
    dealt += quota[w]!;
    remainders.push({ w, r: exact - quota[w]! });
  }
  remainders.sort((a, b) => b.r - a.r || a.w - b.w);
  for (let i = 0; dealt < orphans.length; i = (i + 1) % remainders.length) {
    quota[remainders[i]!.w]!++;
    dealt++;
  }

  // Smooth dealing: the next bucket goes to the survivor with the largest fraction of its quota still open.
  const full = quota.slice();
  const moves: Move[] = [];
  for (const b of orphans) {
    let to = -1;
    for (const w of survivors) {
      if (quota[w]! > 0 && (to < 0 || quota[w]! * full[to]! > quota[to]! * full[w]!)) to = w;
    }
    quota[to]!--;
    moves.push({ bucket: b, from: owners[b]!, to });
  }
  return moves;
}

/**
 * Moves every bucket of `deadWorker` to the live workers (other than it), bucket counts in proportion to
 * `weights` (target shares or indexes: only ratios matter; all zero means equal): each survivor gets within
 * one bucket of its exact quota. Count-based, because a dead worker's bucket loads are no longer measured.
 * Returns [] when nobody survives. Ignores maxMoves: an orphaned bucket loses every packet.
 */
export function planEvacuation(
  owners: Uint16Array,
  deadWorker: number,
  weights: ArrayLike<number>,
  alive: ArrayLike<number>,
): Move[] {
  const n = weights.length;
  return evacuate(owners, (o) => o === deadWorker, weights, (w) => w !== deadWorker && (alive[w] ?? 0) > 0, n);
}

interface Prepared {
  readonly n: number;
  readonly total: number;
  readonly shares: Float64Array;
  readonly loads: Float64Array;
  readonly live: (w: number) => boolean;
}

function validate(input: PlanInput): void {
  const n = input.targetShares.length;
  if (input.owners.length !== input.bucketLoad.length) {
    throw new RangeError(`owners has ${input.owners.length} buckets, bucketLoad ${input.bucketLoad.length}`);
  }
  if (input.alive.length < n || input.cooldown.length < n) {
    throw new RangeError(`alive/cooldown must cover all ${n} workers`);
  }
}

/** Dead-owned buckets first: if any exist, the plan is their evacuation and nothing else. */
function orphanMoves(input: PlanInput): Move[] | null {
  const n = input.targetShares.length;
  const live = (w: number) => w < n && input.alive[w]! > 0;
  for (let b = 0; b < input.owners.length; b++) {
    if (!live(input.owners[b]!)) return evacuate(input.owners, (o) => !live(o), input.targetShares, live, n);
  }
  return null;
}

function prepare(input: PlanInput): Prepared {
  const n = input.targetShares.length;
  const live = (w: number) => input.alive[w]! > 0;
  const loads = loadsByWorker(input.owners, input.bucketLoad, n);
  let total = 0;
  for (let w = 0; w < n; w++) total += loads[w]!;
  return { n, total, shares: normalisedShares(input.targetShares, live, n), loads, live };
}

/**
 * One balance round (RSS++-style greedy). While some live worker is outside its dead band and moves remain
 * (a worker outside its band when the round starts stays "outside" until it is within SETTLE_FRACTION of it):
 * take donors from the most over target down and receivers from the most under target up (receivers not in
 * cooldown); the first pair where at least one side is outside its band and some bucket of the donor improves
 * the pair (0 < x < d_D - d_R) gives one move. The bucket is the largest that fits within
 * min(d_D, -d_R), so neither side crosses its target; if none fits (only big buckets), the one that leaves
 * the pair's worse side nearest its target. Stops when all are in band, no move improves, or at maxMoves.
 *
 * No load measured (T = 0) plans nothing. Buckets of dead workers (or slots >= N) are a correctness problem,
 * not a balance one: if there are any, the plan is their evacuation (see `planEvacuation`) and nothing else.
 * Over fixed loads repeated rounds converge: each move lowers the dispersion, and at the fixed point every
 * live worker is within max(deadBand * target_i, largest bucket load) of its target.
 */
export function planMoves(input: PlanInput): Move[] {
  validate(input);
  const orphans = orphanMoves(input);
  if (orphans) return orphans;
  const { n, total, shares, loads, live } = prepare(input);
  if (!(total > 0)) return [];
  const eps = REL_EPSILON * total;
  const owners = input.owners.slice();
  const load = input.bucketLoad;
  const pinned = input.pinned;
  const dev = new Float64Array(n);
  for (let w = 0; w < n; w++) dev[w] = live(w) ? loads[w]! - shares[w]! * total : 0;
  const band = (w: number) => Math.max(0, input.deadBand) * shares[w]! * total;
  // Hysteresis: the dead band decides WHETHER a worker is rebalanced; one that is outside it at the start of the
  // round is brought to within SETTLE_FRACTION of it, not just over its edge (stopping at the edge left a worker
  // up to a whole band off target for good, e.g. 0.447 of the packets against a 0.42 target).
  const active = new Uint8Array(n);
  for (let w = 0; w < n; w++) if (live(w) && Math.abs(dev[w]!) > band(w)) active[w] = 1;
  const outOfBand = (w: number) => Math.abs(dev[w]!) > (active[w] !== 0 ? SETTLE_FRACTION * band(w) : band(w));
  const minPositive = new Float64Array(n);
  const donors: number[] = [];
  const receivers: number[] = [];
  const moves: Move[] = [];

  while (moves.length < input.maxMoves) {
    let anyOut = false;
    for (let w = 0; w < n; w++) if (live(w) && outOfBand(w)) anyOut = true;
    if (!anyOut) break;

    minPositive.fill(Infinity);
    for (let b = 0; b < owners.length; b++) {
      if (pinned !== undefined && pinned[b] !== 0) continue;
      const x = clean(load[b]!);
      const o = owners[b]!;
      if (x > eps && x < minPositive[o]!) minPositive[o] = x;
    }
    donors.length = 0;
    receivers.length = 0;
    for (let w = 0; w < n; w++) {
      if (!live(w)) continue;
      if (dev[w]! > 0) donors.push(w);
      else if (dev[w]! < 0 && input.cooldown[w] === 0) receivers.push(w);
    }
    donors.sort((a, b) => dev[b]! - dev[a]! || a - b);
    receivers.sort((a, b) => dev[a]! - dev[b]! || a - b);

    let from = -1;
    let to = -1;
    search: for (const d of donors) {
      for (const r of receivers) {
        if (!outOfBand(d) && !outOfBand(r)) continue;
        if (minPositive[d]! < dev[d]! - dev[r]! - eps) {
          from = d;
          to = r;
          break search;
        }
      }
    }
    if (from < 0) break;

    const bucket = pickBucket(owners, load, from, dev[from]!, dev[to]!, eps, pinned);
    const x = clean(load[bucket]!);
    owners[bucket] = to;
    dev[from]! -= x;
    dev[to]! += x;
    moves.push({ bucket, from, to });
  }
  return moves;
}

/** The donor's bucket to hand the receiver; one exists (the caller checked the smallest one improves). */
function pickBucket(
  owners: Uint16Array, load: Float64Array, from: number, dFrom: number, dTo: number, eps: number, pinned?: Uint8Array,
) {
  const fit = Math.min(dFrom, -dTo);
  const gap = dFrom - dTo;
  let bestFit = -1;
  let bestFitLoad = 0;
  let fallback = -1;
  let fallbackWorst = Infinity;
  for (let b = 0; b < owners.length; b++) {
    if (owners[b] !== from || (pinned !== undefined && pinned[b] !== 0)) continue;
    const x = clean(load[b]!);
    if (!(x > eps && x < gap - eps)) continue;
    if (x <= fit) {
      if (x > bestFitLoad) {
        bestFit = b;
        bestFitLoad = x;
      }
    } else {
      const worst = Math.max(Math.abs(dFrom - x), Math.abs(dTo + x));
      if (worst < fallbackWorst) {
        fallback = b;
        fallbackWorst = worst;
      }
    }
  }
  return bestFit >= 0 ? bestFit : fallback;
}

/**
 * The overload path (claim: a thread whose queue passed a predetermined criterion has its work reassigned to
 * the thread with the least load). The overloaded worker gives buckets away at once, largest load first,
 * each to the live worker that is least loaded relative to its share once it holds the bucket
 * ((load_i + x) / share_i; with equal shares simply the least loaded worker), until its own load is at or
 * below its target. A bucket is skipped when even that worker would end up as loaded (relative to share) as
 * the donor is now: that would only move the overload. Receivers in cooldown are used
 * only when no other live worker exists. Respects maxMoves; ignores the dead band. Returns [] when loads are
 * unmeasured (the queue says overload but no bucket shows cost yet: wait for a report) or the worker is dead.
 * Buckets of dead workers are handled as in `planMoves`.
 */
export function planOverload(input: OverloadInput): Move[] {
  validate(input);
  const orphans = orphanMoves(input);
  if (orphans) return orphans;
  const { n, total, shares, loads, live } = prepare(input);
  const o = input.overloaded;
  if (!(total > 0) || !Number.isInteger(o) || o < 0 || o >= n || !live(o)) return [];
  const target = shares[o]! * total;
  if (loads[o]! <= target) return [];

  let receivers: number[] = [];
  for (let w = 0; w < n; w++) if (w !== o && live(w) && input.cooldown[w] === 0 && shares[w]! > 0) receivers.push(w);
  if (receivers.length === 0) {
    for (let w = 0; w < n; w++) if (w !== o && live(w) && shares[w]! > 0) receivers.push(w);
  }
  if (receivers.length === 0) return [];

  const mine: number[] = [];
  for (let b = 0; b < input.owners.length; b++) {
    if (input.owners[b] === o && clean(input.bucketLoad[b]!) > 0) mine.push(b);
  }
  mine.sort((a, b) => input.bucketLoad[b]! - input.bucketLoad[a]! || a - b);

  const moves: Move[] = [];
  for (const b of mine) {
    if (moves.length >= input.maxMoves || loads[o]! <= target) break;
    const x = input.bucketLoad[b]!;
    // Least loaded once it holds the bucket: with unequal shares, the worker with the lowest load/share now
    // is not always the one that takes x best (a small share fills fast).
    let to = receivers[0]!;
    for (const w of receivers) if ((loads[w]! + x) / shares[w]! < (loads[to]! + x) / shares[to]!) to = w;
    if ((loads[to]! + x) / shares[to]! >= loads[o]! / shares[o]!) continue;
    loads[o]! -= x;
    loads[to]! += x;
    moves.push({ bucket: b, from: o, to });
  }
  return moves;
}
