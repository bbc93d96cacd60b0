/**
 * The bucket table: which lane owns each hash bucket. A lane is a worker slot (0..maxWorkers-1) or a hold
 * lane (packets of a migrating bucket wait there). The control plane changes it only through `apply()`
 * with a list of moves and a new epoch; the packet path only reads `owner`.
 */

/** Owner value of a bucket nobody owns (only before start or after every worker died). */
export const UNASSIGNED = 0xffff;

export interface BucketMove {
  readonly bucket: number;
  readonly to: number;
}

export class BucketTable {
  /** bucket -> lane. Read directly on the packet path. */
  readonly owner: Uint16Array;
  readonly mask: number;
  epoch = 0;

  constructor(readonly buckets: number) {
    if (buckets < 1 || buckets > 65536 || (buckets & (buckets - 1)) !== 0) {
      throw new RangeError(`bucket count must be a power of two in [1, 65536], got ${buckets}`);
    }
    this.owner = new Uint16Array(buckets).fill(UNASSIGNED);
    this.mask = buckets - 1;
  }

  /** Applies moves and bumps the epoch. */
  apply(moves: readonly BucketMove[]): number {
    for (const m of moves) this.owner[m.bucket] = m.to;
    return ++this.epoch;
  }

  set(bucket: number, lane: number): void {
    this.owner[bucket] = lane;
  }

  bucketsOf(lane: number): number[] {
    const out: number[] = [];
    for (let b = 0; b < this.buckets; b++) if (this.owner[b] === lane) out.push(b);
    return out;
  }

  countsBy(lanes: number): Uint32Array {
    const counts = new Uint32Array(lanes);
    for (let b = 0; b < this.buckets; b++) {
      const o = this.owner[b]!;
      if (o < lanes) counts[o]!++;
    }
    return counts;
  }
}
