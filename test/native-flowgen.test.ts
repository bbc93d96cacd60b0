/**
 * The native traffic tool (bench/native/flowgen.c) against a real flowlb: 2,000 flows from one socket, each a
 * distinct 127.a.b.c source address, every reply back in order, and flowlb saw 2,000 distinct flows.
 * Needs a C compiler: without one the test fails and says so (CI installs gcc).
 */
import { afterEach, describe, expect, it } from 'vitest';
import { buildFlowgen, runFlowgen } from '../bench/lib/native.js';
import { startFlowlb, stopAll, LOOPBACK, type Running } from './support/service.js';

const FLOWS = 2000;
const ROUNDS = 5;

describe('native flowgen through flowlb', () => {
  const running: Running[] = [];
  afterEach(() => stopAll(running));

  it('2,000 flows x 6 packets each: every reply, in order, and 2,000 flows in flowlb', async () => {
    const build = buildFlowgen();
    if (!build.ok) throw new Error(`flowgen could not be built, so this test cannot run: ${build.reason}`);
    const svc = await startFlowlb([...LOOPBACK, '--workers', '2', '--handler', 'echo', '--no-balance', '--idle-timeout', '5m']);
    running.push(svc);
    const events: string[] = [];
    const r = await runFlowgen(build.path, {
      target: { host: svc.udpHost, port: svc.udpPort }, flows: FLOWS, ratePps: 5000, count: FLOWS * ROUNDS, durationS: 20,
      warmup: true, warmupRatePps: 5000, warmupPasses: 1, drainMs: 2000, sizeBytes: 64,
      onEvent: (e) => events.push(e.event), timeoutMs: 45_000,
    });
    expect(events).toContain('measure');
    // Warm-up: one packet per flow, all back.
    expect(r.warmup).toMatchObject({ sent: FLOWS, received: FLOWS, lost: 0, flowsWithoutReply: 0 });
    // Measured phase: round robin, every flow ROUNDS more packets.
    expect(r.sent).toBe(FLOWS * ROUNDS);
    expect({ received: r.received, lost: r.lost, reordered: r.reordered, duplicated: r.duplicated, late: r.lateBeyondWindow, invalid: r.invalid })
      .toEqual({ received: FLOWS * ROUNDS, lost: 0, reordered: 0, duplicated: 0, late: 0, invalid: 0 });
    expect(r.flowsComplete).toBe(FLOWS);
    expect(r.rttNs.count).toBe(FLOWS * ROUNDS);
    expect(r.rttNs.p50).toBeGreaterThan(0);

    // flowlb saw exactly FLOWS distinct 4-tuples (nothing expires: idle timeout 5 min). Its per-worker counters
    // come with the workers' periodic reports: wait until the last replies are in them (at most 5 s).
    type W = { flowsActive: number; replies: number };
    let workers: W[] = [];
    for (const until = Date.now() + 5000; ;) {
      workers = (await svc.status()).workers as W[];
      if (workers.reduce((a, w) => a + w.replies, 0) >= FLOWS * (ROUNDS + 1) || Date.now() > until) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(workers.reduce((a, w) => a + w.flowsActive, 0)).toBe(FLOWS);
    expect(workers.reduce((a, w) => a + w.replies, 0)).toBe(FLOWS * (ROUNDS + 1));
    expect(workers.every((w) => w.flowsActive > 0)).toBe(true);
    const created = [...(await svc.metrics()).matchAll(/^flowlb_flows_created_total\{[^}]*\} (\d+)/gm)].reduce((a, m) => a + Number(m[1]), 0);
    expect(created).toBe(FLOWS);
  });
});
