/**
 * The flow set: how load is spread over flows, how flows are split between sender processes, and the
 * per-packet choice of a flow. Pure functions and small classes, no I/O.
 */
import { GenError } from './errors.js';

export type Distribution = { readonly kind: 'uniform' } | { readonly kind: 'zipf'; readonly s: number };

/** Parses `uniform` or `zipf:<s>` (s >= 0; zipf:0 is uniform weights picked at random). */
export function parseDistribution(spec: string | Distribution): Distribution {
  if (typeof spec !== 'string') return spec;
  if (spec === 'uniform') return { kind: 'uniform' };
  const m = /^zipf(?::([0-9]*\.?[0-9]+))?$/.exec(spec);
  if (m) {
    const s = m[1] === undefined ? 1 : Number(m[1]);
    if (Number.isFinite(s) && s >= 0 && s <= 10) return { kind: 'zipf', s };
  }
  throw new GenError('ERR_GEN_OPTION', `--dist: expected "uniform" or "zipf:<s>" with 0 <= s <= 10, got "${spec}"`);
}

export function formatDistribution(d: Distribution): string {
  return d.kind === 'uniform' ? 'uniform' : `zipf:${d.s}`;
}

/** Weight of every flow: 1 for uniform, 1/(i+1)^s for Zipf (flow 0 is the heaviest). */
export function flowWeights(flows: number, dist: Distribution): Float64Array {
  const w = new Float64Array(flows);
  for (let i = 0; i < flows; i++) w[i] = dist.kind === 'uniform' ? 1 : 1 / Math.pow(i + 1, dist.s);
  return w;
}

/**
 * Flows of sender process `index` out of `count`. Interleaved (flow i goes to process i mod count) so that
 * under Zipf the heavy flows, and the rate, are spread over processes instead of landing on the first.
 */
export function shardFlowIds(flows: number, index: number, count: number): Uint32Array {
  const n = index < flows ? Math.ceil((flows - index) / count) : 0;
  const ids = new Uint32Array(n);
  for (let k = 0; k < n; k++) ids[k] = index + k * count;
  return ids;
}

/** Splits an integer total in proportion to weights (largest remainder), so the parts add up exactly. */
export function splitProportional(total: number, weights: ArrayLike<number>): number[] {
  let sum = 0;
  for (let i = 0; i < weights.length; i++) sum += weights[i]!;
  const parts: number[] = [];
  const rest: Array<[number, number]> = [];
  let given = 0;
  for (let i = 0; i < weights.length; i++) {
    const exact = sum > 0 ? (total * weights[i]!) / sum : 0;
    const whole = Math.floor(exact);
    parts.push(whole);
    given += whole;
    rest.push([exact - whole, i]);
  }
  rest.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (let k = 0; given < total && k < rest.length; k++, given++) parts[rest[k]![1]]! += 1;
  return parts;
}

/** mulberry32: a small, fast, seedable PRNG (uniform in [0, 1)); runs are reproducible with --seed. */
export function makeRng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * Walker/Vose alias table: O(n) to build, O(1) per draw (one random number: its integer part picks a
 * column, its fraction decides between the column and its alias).
 */
export class AliasTable {
  readonly size: number;
  private readonly prob: Float64Array;
  private readonly alias: Uint32Array;

  constructor(weights: ArrayLike<number>) {
    const n = weights.length;
    if (n === 0) throw new RangeError('alias table needs at least one weight');
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const w = weights[i]!;
      if (!(w >= 0) || !Number.isFinite(w)) throw new RangeError(`bad weight ${w} at ${i}`);
      sum += w;
    }
    if (!(sum > 0)) throw new RangeError('weights add up to 0');
    this.size = n;
    this.prob = new Float64Array(n);
    this.alias = new Uint32Array(n);
    const scaled = new Float64Array(n);
    const small: number[] = [];
    const large: number[] = [];
    for (let i = 0; i < n; i++) {
      scaled[i] = (weights[i]! * n) / sum;
      (scaled[i]! < 1 ? small : large).push(i);
    }
    while (small.length > 0 && large.length > 0) {
      const s = small.pop()!;
      const l = large.pop()!;
      this.prob[s] = scaled[s]!;
      this.alias[s] = l;
      scaled[l] = scaled[l]! + scaled[s]! - 1;
      (scaled[l]! < 1 ? small : large).push(l);
    }
    // Whatever is left is 1 up to rounding error.
    for (const i of large) this.prob[i] = 1;
    for (const i of small) this.prob[i] = 1;
  }

  /** A flow index drawn with probability proportional to its weight; `u` uniform in [0, 1). */
  pick(u: number): number {
    const x = u * this.size;
    const i = Math.floor(x);
    return x - i < this.prob[i]! ? i : this.alias[i]!;
  }
}

/**
 * Chooses the flow of the next packet. Uniform load goes round robin, so every flow gets exactly its share
 * and a stream's packets are evenly spaced (an RTP stream at 50 pps really is one packet per 20 ms);
 * weighted load draws from an alias table.
 */
export interface FlowPicker {
  next(): number;
}

export function makeFlowPicker(weights: Float64Array, dist: Distribution, seed: number): FlowPicker {
  if (dist.kind === 'uniform') {
    const n = weights.length;
    let i = 0;
    return {
      next(): number {
        const f = i;
        i = i + 1 === n ? 0 : i + 1;
        return f;
      },
    };
  }
  const table = new AliasTable(weights);
  const rng = makeRng(seed);
  return { next: () => table.pick(rng()) };
}
