/**
 * Weighted Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network Load
 * Balancer", NSDI 2016, section 3.4; weights as in Katran's `MaglevHashV2`).
 *
 * Every backend walks its own permutation of the table positions (`offset + j * skip mod M`, M prime, so
 * every skip in [1, M-1] visits every position) and the backends take turns claiming the next free position
 * of their permutation until the table is full. Because each backend's preference order depends only on its
 * own key, adding or removing one backend changes few positions of the others: the property the proxy relies
 * on to keep a flow on its backend whichever worker serves it, and across reloads.
 *
 * Weights: per round every backend earns `weight / maxWeight` turn credit and claims one position per whole
 * credit, so the heaviest backend claims one position every round and shares follow weights to within about
 * one position (Katran's V2 population). Fractional weights work; weight 0 means "no new flows".
 *
 * The table is built on the control path (startup and reload); the packet path only calls `lookupMaglev`.
 */
import xxhash from 'xxhash-wasm';

/** Seeds of the two independent key hashes (offset and skip). Changing them remaps every flow. */
export const MAGLEV_OFFSET_SEED = 0x6d61676c; // 'magl'
export const MAGLEV_SKIP_SEED = 0x65762121; // 'ev!!'

/** The paper recommends M > 100 × backends so that shares differ by at most about 1% (section 5.3). */
export const MAGLEV_SLOTS_PER_BACKEND = 100;

/** Default table size, enough for up to 655 backends; the size the paper's evaluation uses. */
export const DEFAULT_MAGLEV_TABLE_SIZE = 65_537;

/** Larger prime table sizes, each about twice the previous, tried in order once 65537 is too small. */
const MAGLEV_TABLE_PRIMES: readonly number[] = [65_537, 131_071, 262_139, 524_287, 1_048_573, 2_097_143, 4_194_301];

export interface MaglevBackend {
  /** Stable identity of the backend, e.g. "10.0.0.1:53". Its position preferences derive from this string only. */
  readonly key: string;
  /** Relative weight, finite and >= 0. */
  readonly weight: number;
}

/** Hashes a string with a seed to an unsigned 32-bit integer. */
export type KeyHasher = (key: string, seed: number) => number;

// Loaded once per process at import: the table builder is then synchronous, like the rest of the control path.
const { h32 } = await xxhash();

/** xxHash32 of the UTF-8 bytes of `key` (what `buildMaglevTable` uses unless given another hasher). */
export const hashBackendKey: KeyHasher = h32;

export function isPrime(n: number): boolean {
  if (!Number.isInteger(n) || n < 2) return false;
  if (n % 2 === 0) return n === 2;
  for (let d = 3; d * d <= n; d += 2) if (n % d === 0) return false;
  return true;
}

/** The smallest table size in MAGLEV_TABLE_PRIMES that is > 100 × backendCount, else the smallest prime >= 100 × n + 1. */
export function maglevTableSize(backendCount: number): number {
  const min = MAGLEV_SLOTS_PER_BACKEND * Math.max(1, backendCount) + 1;
  for (const p of MAGLEV_TABLE_PRIMES) if (p >= min) return p;
  let n = min;
  while (!isPrime(n)) n++;
  return n;
}

/**
 * Builds the lookup table: entry i is the index (into `backends`) of the backend owning position i, or -1 for
 * every entry if no backend has a positive weight. Deterministic: the same list (keys, weights, order) gives the
 * same table in every process, which is what lets every worker route a flow to the same backend.
 *
 * Throws RangeError for a weight that is negative or not finite, a duplicate key, or a table size that is not a
 * prime larger than the number of backends.
 */
export function buildMaglevTable(
  backends: readonly MaglevBackend[],
  tableSize: number = maglevTableSize(backends.length),
  hashKey: KeyHasher = hashBackendKey,
): Int32Array {
  const n = backends.length;
  if (!isPrime(tableSize) || tableSize <= n) {
    throw new RangeError(`maglev table size ${tableSize} must be a prime larger than the backend count ${n}`);
  }
  const seen = new Set<string>();
  let maxWeight = 0;
  for (const b of backends) {
    if (!Number.isFinite(b.weight) || b.weight < 0) {
      throw new RangeError(`maglev backend ${b.key} has weight ${b.weight}; weights must be finite and >= 0`);
    }
    if (seen.has(b.key)) throw new RangeError(`maglev backend ${b.key} is listed twice`);
    seen.add(b.key);
    if (b.weight > maxWeight) maxWeight = b.weight;
  }

  const table = new Int32Array(tableSize).fill(-1);
  if (maxWeight === 0) return table;

  // Only positive weights take part; `members` holds their indexes into `backends`.
  const members: number[] = [];
  for (let i = 0; i < n; i++) if (backends[i]!.weight > 0) members.push(i);
  const m = members.length;
  const offset = new Float64Array(m);
  const skip = new Float64Array(m);
  const next = new Float64Array(m);
  const credit = new Float64Array(m);
  const share = new Float64Array(m);
  for (let k = 0; k < m; k++) {
    const b = backends[members[k]!]!;
    offset[k] = (hashKey(b.key, MAGLEV_OFFSET_SEED) >>> 0) % tableSize;
    skip[k] = ((hashKey(b.key, MAGLEV_SKIP_SEED) >>> 0) % (tableSize - 1)) + 1;
    share[k] = b.weight / maxWeight;
  }

  // next <= M, so offset + next * skip < M * (M + 1), far below 2^53: Float64 arithmetic stays exact.
  let filled = 0;
  for (;;) {
    for (let k = 0; k < m; k++) {
      credit[k] += share[k]!;
      while (credit[k]! >= 1) {
        credit[k] -= 1;
        let pos = (offset[k]! + next[k]! * skip[k]!) % tableSize;
        while (table[pos] !== -1) {
          next[k]++;
          pos = (offset[k]! + next[k]! * skip[k]!) % tableSize;
        }
        table[pos] = members[k]!;
        next[k]++;
        if (++filled === tableSize) return table;
      }
    }
  }
}

/** The backend index owning `flowHash` (any 32-bit integer, e.g. the flow's 4-tuple hash), or -1 if none. */
export function lookupMaglev(table: Int32Array, flowHash: number): number {
  return table[(flowHash >>> 0) % table.length]!;
}
