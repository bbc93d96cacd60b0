/**
 * The balancer's imbalance index after a step in a worker's capacity (a CPU hog arrives on its core), fed with
 * worker reports as the primary receives them; real Balancer, LoadModel and planner, no processes.
 */
import { describe, expect, it } from 'vitest';
import { counters, fakeWorker, report, unitService } from './support/control.js';

async function twoReadyWorkers() {
  const u = await unitService();
  u.workers.attach(0, fakeWorker(101));
  u.workers.markReady(0, 101);
  u.workers.attach(1, fakeWorker(102));
  u.workers.markReady(1, 102);
  return u;
}

describe('imbalance index after a step', () => {
  it('takes a fall at once and never jumps back towards the level before it', async () => {
    const { balancer: b } = await twoReadyWorkers();
    const feed = (lane: number, cpuUtil: number, elu: number): void =>
      b.onReport(lane, report(counters(), { cpuUtil, elu, queueDepth: 0, intervalMs: 100 }));
    // Uncontended: cpu = elu, index 1 for both.
    for (let i = 0; i < 40; i++) { feed(0, 0.6, 0.6); feed(1, 0.6, 0.6); b.tick(); }
    expect(b.indexes[0]).toBeCloseTo(1, 6);
    expect(b.indexSteps).toBe(0);
    // A hog takes most of worker 0's core: its loop is busy all the time (elu 1) but it gets 0.3 of the CPU.
    const seen: number[] = [];
    for (let i = 0; i < 40; i++) { feed(0, 0.3, 1); feed(1, 0.6, 0.6); b.tick(); seen.push(b.indexes[0]!); }
    expect(b.indexSteps).toBeGreaterThanOrEqual(1);
    // Within 3 reports the index is below 0.6 (the slow average alone would still read ~0.8).
    expect(Math.min(...seen.slice(0, 3))).toBeLessThan(0.6);
    // It only goes down towards 0.3 from there. Before the slow averages restarted at a step, the index followed
    // the fast one while that was 0.2 below the slow one, then jumped back up to the slow one (~0.33 -> ~0.52).
    for (let i = 1; i < seen.length; i++) expect(seen[i]!).toBeLessThanOrEqual(seen[i - 1]! + 0.01);
    expect(seen.at(-1)!).toBeCloseTo(0.3, 1);
    expect(b.indexes[1]).toBeCloseTo(1, 6);
  });
});
