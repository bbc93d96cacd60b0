import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import {
  ELU_EVIDENCE,
  MIN_CAPACITY,
  computeIndexes,
  effectiveCapacity,
  findOverloaded,
  targetShares,
  type WorkerLoad,
} from '../src/control/imbalance.js';

const worker = (cpuUtil: number, elu: number, alive = true, queueDepth = 0): WorkerLoad => ({
  alive,
  cpuUtil,
  elu,
  queueDepth,
});

const util = fc.double({ min: 0, max: 1.2, noNaN: true });
const elu = fc.double({ min: 0, max: 1, noNaN: true });
const workerArb = fc.record({
  alive: fc.boolean(),
  cpuUtil: util,
  elu,
  queueDepth: fc.integer({ min: 0, max: 100_000 }),
});

function sum(a: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]!;
  return s;
}

describe('effectiveCapacity', () => {
  it('is a full core for an uncontended worker at any load', () => {
    for (const u of [0, 0.01, 0.3, 0.7, 1]) expect(effectiveCapacity(u, u)).toBeCloseTo(1, 12);
    expect(effectiveCapacity(0, 0)).toBe(1);
  });

  it('is the CPU share of a worker whose loop is saturated but descheduled', () => {
    expect(effectiveCapacity(0.5, 1)).toBeCloseTo(0.5, 12);
    expect(effectiveCapacity(0.25, 1)).toBeCloseTo(0.25, 12);
  });

  it('fades the correction in below ELU_EVIDENCE and floors at MIN_CAPACITY', () => {
    // Half the evidence: half the correction.
    expect(effectiveCapacity(0, ELU_EVIDENCE / 2)).toBeCloseTo(0.5, 12);
    expect(effectiveCapacity(0, 1)).toBe(MIN_CAPACITY);
  });

  it('counts helper-thread CPU above ELU as no more than a full core', () => {
    expect(effectiveCapacity(1.3, 0.9)).toBe(1);
  });

  it('treats garbage measurements as zero', () => {
    expect(effectiveCapacity(Number.NaN, 1)).toBe(MIN_CAPACITY);
    expect(effectiveCapacity(0.5, Number.NaN)).toBe(1);
    expect(effectiveCapacity(-1, -1)).toBe(1);
  });

  it('is non-decreasing in cpu and non-increasing in elu', () => {
    fc.assert(
      fc.property(util, util, elu, elu, (c1, c2, e1, e2) => {
        const [cLo, cHi] = c1 <= c2 ? [c1, c2] : [c2, c1];
        const [eLo, eHi] = e1 <= e2 ? [e1, e2] : [e2, e1];
        expect(effectiveCapacity(cHi, e1)).toBeGreaterThanOrEqual(effectiveCapacity(cLo, e1) - 1e-12);
        expect(effectiveCapacity(c1, eHi)).toBeLessThanOrEqual(effectiveCapacity(c1, eLo) + 1e-12);
      }),
    );
  });

  it('never goes above the CPU limit, and is unchanged by a limit of a core or more (or none)', () => {
    const limit = fc.double({ min: 0.01, max: 4, noNaN: true });
    fc.assert(
      fc.property(util, elu, limit, (c, e, l) => {
        const free = effectiveCapacity(c, e);
        expect(effectiveCapacity(c, e, l)).toBeCloseTo(Math.min(l, free), 12);
        expect(effectiveCapacity(c, e, 1 + l)).toBe(free);
      }),
    );
    // A quarter-core quota, not saturated: a report that was not throttled reads cpu ~ elu (ratio 1); the quota
    // is the ceiling. One that was throttled reads its quota anyway.
    expect(effectiveCapacity(0.2, 0.2, 0.25)).toBeCloseTo(0.25, 12);
    expect(effectiveCapacity(0.25, 1, 0.25)).toBeCloseTo(0.25, 12);
    // A neighbour on the core below the quota still shows.
    expect(effectiveCapacity(0.1, 1, 0.25)).toBeCloseTo(0.1, 12);
    expect(computeIndexes([{ alive: true, cpuUtil: 0.3, elu: 0.3, queueDepth: 0, cpuLimit: 0.5 }])[0]).toBeCloseTo(0.5, 12);
  });

  it('is continuous: a small change of a measurement moves it little', () => {
    fc.assert(
      fc.property(util, elu, fc.double({ min: -1e-4, max: 1e-4, noNaN: true }), (c, e, delta) => {
        const e2 = Math.min(1, Math.max(0, e + delta));
        const c2 = Math.max(0, c + delta);
        // Lipschitz-like bound: |d cap| <= |d cpu| / elu + |d elu| * (1/ELU_EVIDENCE + cpu/elu^2); keep it loose
        // but finite away from elu = 0, where the evidence term makes it vanish anyway.
        expect(Math.abs(effectiveCapacity(c2, e2) - effectiveCapacity(c, e))).toBeLessThan(0.01);
      }),
    );
  });
});

describe('computeIndexes and targetShares', () => {
  it('gives equal shares to equal measurements', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 16 }), util, elu, (n, c, e) => {
        const shares = targetShares(computeIndexes(Array.from({ length: n }, () => worker(c, e))));
        for (const s of shares) expect(s).toBeCloseTo(1 / n, 12);
      }),
    );
  });

  it('gives a contended worker a smaller share than an uncontended one', () => {
    const shares = targetShares(computeIndexes([worker(0.5, 1), worker(0.5, 0.5), worker(0.9, 0.9)]));
    expect(shares[0]).toBeLessThan(shares[1]!);
    expect(shares[0]).toBeCloseTo(0.5 / 2.5, 12);
    expect(shares[1]).toBeCloseTo(1 / 2.5, 12);
    expect(shares[2]).toBeCloseTo(1 / 2.5, 12);
  });

  it('gives dead workers 0 and the live ones shares summing to 1', () => {
    fc.assert(
      fc.property(fc.array(workerArb, { minLength: 1, maxLength: 16 }), (workers) => {
        const idx = computeIndexes(workers);
        const shares = targetShares(idx);
        workers.forEach((w, i) => {
          if (!w.alive) expect(shares[i]).toBe(0);
          else {
            expect(idx[i]).toBeGreaterThanOrEqual(MIN_CAPACITY);
            expect(idx[i]).toBeLessThanOrEqual(1);
            expect(shares[i]).toBeGreaterThan(0);
          }
        });
        if (workers.some((w) => w.alive)) expect(sum(shares)).toBeCloseTo(1, 12);
        else expect(sum(shares)).toBe(0);
      }),
    );
  });

  it('raises a worker share when its cpu share rises, all else equal', () => {
    fc.assert(
      fc.property(fc.array(workerArb, { minLength: 2, maxLength: 8 }), fc.nat(), util, (workers, pick, more) => {
        const i = pick % workers.length;
        const before = targetShares(computeIndexes(workers));
        const bumped = workers.map((w, j) => (j === i ? { ...w, cpuUtil: w.cpuUtil + more } : w));
        const after = targetShares(computeIndexes(bumped));
        expect(after[i]).toBeGreaterThanOrEqual(before[i]! - 1e-12);
        // Everyone else can only lose.
        for (let j = 0; j < workers.length; j++) if (j !== i) expect(after[j]).toBeLessThanOrEqual(before[j]! + 1e-12);
      }),
    );
  });

  it('lowers a worker share when only its ELU rises (more starved)', () => {
    fc.assert(
      fc.property(fc.array(workerArb, { minLength: 2, maxLength: 8 }), fc.nat(), elu, (workers, pick, more) => {
        const i = pick % workers.length;
        const before = targetShares(computeIndexes(workers));
        const bumped = workers.map((w, j) => (j === i ? { ...w, elu: Math.min(1, w.elu + more) } : w));
        const after = targetShares(computeIndexes(bumped));
        expect(after[i]).toBeLessThanOrEqual(before[i]! + 1e-12);
      }),
    );
  });

  it('writes into a caller array', () => {
    const out = new Float64Array(2);
    expect(computeIndexes([worker(0.5, 1), worker(0, 0, false)], out)).toBe(out);
    expect(Array.from(out)).toEqual([0.5, 0]);
    const shares = new Float64Array(2);
    expect(targetShares(out, shares)).toBe(shares);
    expect(Array.from(shares)).toEqual([1, 0]);
  });

  it('ignores negative and non-finite indexes', () => {
    expect(Array.from(targetShares([1, -1, Number.NaN, 3]))).toEqual([0.25, 0, 0, 0.75]);
  });
});

describe('findOverloaded', () => {
  it('picks the live worker with the deepest queue past the limit', () => {
    const ws = [worker(1, 1, true, 500), worker(1, 1, true, 9000), worker(1, 1, false, 20000), worker(1, 1, true, 8500)];
    expect(findOverloaded(ws, 8192)).toBe(1);
    expect(findOverloaded(ws, 9000)).toBe(-1);
    expect(findOverloaded([], 1)).toBe(-1);
  });
});
