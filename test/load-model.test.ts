import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { LoadModel, NO_REPORTER, SLOW_DIVISOR, type WorkerReport } from '../src/control/load-model.js';

function report(
  cpuUtil: number,
  elu: number,
  buckets: Record<number, number>,
  opts: { queueDepth?: number; intervalMs?: number; bytesPerPacket?: number; handled?: number; cpuLimit?: number } = {},
): WorkerReport {
  const ids = Object.keys(buckets).map(Number);
  return {
    handledPackets: opts.handled,
    cpuLimit: opts.cpuLimit,
    cpuUtil,
    elu,
    queueDepth: opts.queueDepth ?? 0,
    intervalMs: opts.intervalMs ?? 200,
    bucketIds: Uint32Array.from(ids),
    bucketPackets: ids.map((b) => buckets[b]!),
    bucketBytes: ids.map((b) => buckets[b]! * (opts.bytesPerPacket ?? 100)),
  };
}

describe('LoadModel', () => {
  it('validates its shape', () => {
    expect(() => new LoadModel(0, 16, 0.3)).toThrow(RangeError);
    expect(() => new LoadModel(NO_REPORTER, 16, 0.3)).toThrow(RangeError);
    expect(() => new LoadModel(2, 0, 0.3)).toThrow(RangeError);
    expect(() => new LoadModel(2, 16, 0)).toThrow(RangeError);
    expect(() => new LoadModel(2, 16, 1.5)).toThrow(RangeError);
    expect(() => new LoadModel(2, 16, 1).ingestReport(2, report(0, 0, {}))).toThrow(RangeError);
  });

  it('takes the first report as is, then averages with weight alpha', () => {
    const m = new LoadModel(2, 16, 0.25);
    m.ingestReport(0, report(0.4, 0.5, { 3: 100 }, { queueDepth: 40 }));
    expect(m.cpuUtil[0]).toBeCloseTo(0.4, 12);
    expect(m.elu[0]).toBeCloseTo(0.5, 12);
    expect(m.queueDepth[0]).toBe(40);
    expect(m.packetsPerSec[0]).toBeCloseTo(500, 9); // 100 packets in 200 ms
    m.ingestReport(0, report(0.8, 0.9, { 3: 200 }, { queueDepth: 0 }));
    expect(m.cpuUtil[0]).toBeCloseTo(0.25 * 0.8 + 0.75 * 0.4, 12);
    expect(m.elu[0]).toBeCloseTo(0.25 * 0.9 + 0.75 * 0.5, 12);
    expect(m.queueDepth[0]).toBeCloseTo(30, 12);
    expect(m.lastQueueDepth[0]).toBe(0);
    expect(m.packetsPerSec[0]).toBeCloseTo(0.25 * 1000 + 0.75 * 500, 9);
    expect(m.reports[0]).toBe(2);
    expect(m.reports[1]).toBe(0);
  });

  it('keeps per-bucket packet and byte rates, normalised by the interval', () => {
    const m = new LoadModel(1, 8, 1);
    m.ingestReport(0, report(0.5, 0.5, { 1: 50, 2: 150 }, { intervalMs: 500, bytesPerPacket: 64 }));
    expect(m.bucketPacketsPerSec[1]).toBeCloseTo(100, 9);
    expect(m.bucketPacketsPerSec[2]).toBeCloseTo(300, 9);
    expect(m.bucketBytesPerSec[2]).toBeCloseTo(300 * 64, 6);
    expect(m.bucketReporter[1]).toBe(0);
    expect(m.bucketReporter[0]).toBe(NO_REPORTER);
  });

  it('estimates a bucket load as its packet share of its worker CPU', () => {
    const m = new LoadModel(2, 8, 1);
    m.ingestReport(0, report(0.6, 0.7, { 0: 100, 1: 300 }));
    m.ingestReport(1, report(0.2, 1, { 2: 50 }));
    const loads = m.bucketLoads();
    expect(loads[0]).toBeCloseTo(0.15, 12);
    expect(loads[1]).toBeCloseTo(0.45, 12);
    // Worker 1 is starved (elu 1, cpu 0.2), but its bucket costs what it costs: 0.2 of a core.
    expect(loads[2]).toBeCloseTo(0.2, 12);
    expect(loads[3]).toBe(0);
  });

  it('counts a saturated worker by its demand: arrivals x CPU per processed packet', () => {
    // Worker 0 gets 1000 packets per 200 ms but processes 500 on a full core: it demands 2 cores.
    // Worker 1 keeps up: 400 packets in, 400 processed on 0.4 of a core.
    const m = new LoadModel(2, 8, 1);
    m.ingestReport(0, report(1, 1, { 0: 750, 2: 250 }, { handled: 500 }));
    m.ingestReport(1, report(0.4, 0.4, { 1: 400 }, { handled: 400 }));
    const loads = m.bucketLoads();
    expect(loads[0]).toBeCloseTo(1.5, 9);
    expect(loads[2]).toBeCloseTo(0.5, 9);
    expect(loads[1]).toBeCloseTo(0.4, 9);
    // A worker draining a backlog (processes more than arrives) demands less than the CPU it burns now.
    m.ingestReport(1, report(0.8, 0.8, { 1: 400 }, { handled: 800 }));
    expect(m.bucketLoads()[1]).toBeCloseTo(0.4, 9);
    // A worker that processes next to nothing is capped at MAX_DEMAND_RATIO x its CPU, not infinite.
    m.ingestReport(0, report(0.5, 1, { 0: 1000 }, { handled: 0 }));
    expect(m.bucketLoads()[0]).toBeCloseTo(0.5 * 8, 9);
    // Without a handled figure (older workers, tests) the arrivals stand in: loads add up to the CPU.
    const m2 = new LoadModel(1, 4, 1);
    m2.ingestReport(0, report(0.6, 0.6, { 0: 300, 1: 100 }));
    const l2 = m2.bucketLoads();
    expect(l2[0]! + l2[1]!).toBeCloseTo(0.6, 9);
    // A reset forgets the processed rate too.
    m.resetWorker(0);
    expect(m.handledPerSec[0]).toBe(-1);
  });

  it('averages the index inputs (cpu, elu) SLOW_DIVISOR times slower than the loads; snapSlow restarts them', () => {
    const m = new LoadModel(1, 4, 0.3);
    const k = 0.3 / SLOW_DIVISOR;
    m.ingestReport(0, report(0.5, 0.5, { 0: 10 }));
    m.ingestReport(0, report(0.2, 1, { 0: 10 }));
    expect(m.cpuUtil[0]).toBeCloseTo(0.3 * 0.2 + 0.7 * 0.5, 12);
    expect(m.cpuSlow[0]).toBeCloseTo(k * 0.2 + (1 - k) * 0.5, 12);
    expect(m.eluSlow[0]).toBeCloseTo(k * 1 + (1 - k) * 0.5, 12);
    const [w] = m.indexInputs([1]);
    expect(w!.cpuUtil).toBe(m.cpuSlow[0]);
    expect(w!.elu).toBe(m.eluSlow[0]);
    expect(w!.alive).toBe(true);
    m.snapSlow(0);
    expect(m.cpuSlow[0]).toBe(m.cpuUtil[0]);
    expect(m.eluSlow[0]).toBe(m.elu[0]);
    m.resetWorker(0);
    expect(m.cpuSlow[0]).toBe(0);
  });

  it('decays a bucket its worker stops reporting', () => {
    const m = new LoadModel(2, 8, 0.5);
    m.ingestReport(0, report(0.5, 0.5, { 0: 100, 1: 100 }));
    const before = m.bucketPacketsPerSec[1]!;
    m.ingestReport(0, report(0.5, 0.5, { 0: 100 }));
    expect(m.bucketPacketsPerSec[1]).toBeCloseTo(before / 2, 9);
    // Another worker's report does not touch it.
    m.ingestReport(1, report(0.1, 0.1, { 5: 10 }));
    expect(m.bucketPacketsPerSec[1]).toBeCloseTo(before / 2, 9);
  });

  it('lets a moved bucket carry its rate to the new owner', () => {
    const m = new LoadModel(2, 8, 0.5);
    m.ingestReport(0, report(0.5, 0.5, { 4: 200 }));
    const rate = m.bucketPacketsPerSec[4]!;
    m.ingestReport(1, report(0.5, 0.5, { 4: 200 }));
    expect(m.bucketReporter[4]).toBe(1);
    expect(m.bucketPacketsPerSec[4]).toBeCloseTo(0.5 * 1000 + 0.5 * rate, 9);
    // The old owner's next report no longer decays it.
    m.ingestReport(0, report(0.1, 0.1, {}));
    expect(m.bucketPacketsPerSec[4]).toBeCloseTo(0.5 * 1000 + 0.5 * rate, 9);
  });

  it('resets a worker slot and the rates of the buckets it reported', () => {
    const m = new LoadModel(2, 8, 0.5);
    m.ingestReport(0, report(0.5, 0.6, { 0: 10, 1: 10 }, { queueDepth: 9 }));
    m.ingestReport(1, report(0.3, 0.3, { 2: 10 }));
    m.resetWorker(0);
    expect([m.cpuUtil[0], m.elu[0], m.queueDepth[0], m.packetsPerSec[0], m.reports[0]]).toEqual([0, 0, 0, 0, 0]);
    expect(m.bucketReporter[0]).toBe(NO_REPORTER);
    expect(m.bucketPacketsPerSec[0]).toBe(0);
    expect(m.bucketReporter[2]).toBe(1);
    expect(m.bucketLoads()[2]).toBeCloseTo(0.3, 12);
    // The replacement's first report counts as a first report again.
    m.ingestReport(0, report(0.9, 0.9, {}));
    expect(m.cpuUtil[0]).toBeCloseTo(0.9, 12);
  });

  it('rejects unusable reports and entries without throwing', () => {
    const m = new LoadModel(1, 4, 0.5);
    expect(m.ingestReport(0, report(0.5, 0.5, { 0: 1 }, { intervalMs: 0 }))).toBe(false);
    expect(m.ingestReport(0, report(0.5, 0.5, { 0: 1 }, { intervalMs: Number.NaN }))).toBe(false);
    expect(m.reports[0]).toBe(0);
    const bad: WorkerReport = {
      cpuUtil: Number.NaN,
      elu: 7,
      queueDepth: -3,
      intervalMs: 200,
      bucketIds: [0, 9, -1, 1.5, 2, 3],
      bucketPackets: [1, 1, 1, 1, Number.NaN, 4],
      bucketBytes: [1, 1, 1, 1, 1],
    };
    expect(m.ingestReport(0, bad)).toBe(true);
    expect(m.rejectedEntries).toBe(5); // 9, -1, 1.5, NaN packets, and bucket 3 with no byte count
    expect(m.cpuUtil[0]).toBe(0);
    expect(m.elu[0]).toBe(1);
    expect(m.queueDepth[0]).toBe(0);
    expect(m.bucketPacketsPerSec[0]).toBeGreaterThan(0);
  });

  it('builds WorkerLoad views with the caller liveness', () => {
    const m = new LoadModel(2, 4, 1);
    m.ingestReport(1, report(0.5, 1, {}, { queueDepth: 12, cpuLimit: 0.25 }));
    expect(m.workerLoads(Uint8Array.from([1, 0]))).toEqual([
      { alive: true, cpuUtil: 0, elu: 0, queueDepth: 0, cpuLimit: 0 },
      { alive: false, cpuUtil: 0.5, elu: 1, queueDepth: 12, cpuLimit: 0.25 },
    ]);
    // The quota is the latest report's, not averaged; a slot reset forgets it.
    m.ingestReport(1, report(0.5, 1, {}, { cpuLimit: 0.5 }));
    expect(m.cpuLimit[1]).toBe(0.5);
    m.resetWorker(1);
    expect(m.cpuLimit[1]).toBe(0);
  });

  it('keeps every bucket load finite and non-negative, adding up to each reporting worker CPU', () => {
    const reportArb = (buckets: number) =>
      fc.record({
        worker: fc.integer({ min: 0, max: 3 }),
        cpuUtil: fc.double({ min: 0, max: 1.5, noNaN: true }),
        elu: fc.double({ min: 0, max: 1, noNaN: true }),
        intervalMs: fc.integer({ min: 1, max: 1000 }),
        counts: fc.dictionary(
          fc.integer({ min: 0, max: buckets - 1 }).map(String),
          fc.integer({ min: 0, max: 10_000 }),
        ),
      });
    fc.assert(
      fc.property(
        fc.double({ min: 0.05, max: 1, noNaN: true }),
        fc.array(reportArb(32), { minLength: 1, maxLength: 40 }),
        (alpha, reports) => {
          const m = new LoadModel(4, 32, alpha);
          for (const r of reports) {
            const counts: Record<number, number> = {};
            for (const [k, v] of Object.entries(r.counts)) counts[Number(k)] = v;
            m.ingestReport(r.worker, report(r.cpuUtil, r.elu, counts, { intervalMs: r.intervalMs }));
          }
          const loads = m.bucketLoads(new Float64Array(32));
          const perWorker = [0, 0, 0, 0];
          const ppsPerWorker = [0, 0, 0, 0];
          for (let b = 0; b < 32; b++) {
            expect(Number.isFinite(loads[b]!)).toBe(true);
            expect(loads[b]).toBeGreaterThanOrEqual(0);
            const w = m.bucketReporter[b]!;
            if (w === NO_REPORTER) expect(loads[b]).toBe(0);
            else {
              perWorker[w]! += loads[b]!;
              ppsPerWorker[w]! += m.bucketPacketsPerSec[b]!;
            }
          }
          for (let w = 0; w < 4; w++) {
            if (ppsPerWorker[w]! > 0) expect(perWorker[w]).toBeCloseTo(m.cpuUtil[w]!, 9);
            else expect(perWorker[w]).toBe(0);
          }
        },
      ),
    );
  });
});
