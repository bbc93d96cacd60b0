/**
 * Load-adaptive balancing with real processes: a worker whose queue passes the limit loses buckets at once,
 * and measured load moves buckets until the shares follow the imbalance index.
 */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createCpuCap } from '../bench/lib/cpucap.js';
import { Client, configFile, FIXTURES, removeConfigFiles, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

const running: Running[] = [];
const clients: Client[] = [];
afterEach(async () => {
  await stopAll(running, clients);
  removeConfigFiles();
});

/** 2 workers, 64 buckets, packet mode (balancer off unless `enabled`: no bucket moves), the burn handler with these options. */
async function startPacketMode(handlerOptions: Record<string, unknown>, queueLimit: number, enabled = false): Promise<Running> {
  const file = configFile({
    handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions,
    balancer: { mode: 'packet', enabled, queueLimit, reportInterval: '100ms' },
  });
  const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
  running.push(svc);
  return svc;
}

/** One client for a heavy flow (a large receive buffer for its bursts of replies). */
async function heavyClient(): Promise<Client> {
  const c = await new Client(4).bind('127.0.0.1');
  c.socket.setRecvBufferSize(1 << 20);
  clients.push(c);
  return c;
}

/** Sends `rounds` rounds of one packet per client, `gapMs` apart; bounded. */
async function traffic(cs: Client[], port: number, rounds: number, gapMs: number, stop: () => boolean): Promise<void> {
  for (let i = 0; i < rounds && !stop(); i++) {
    await Promise.all(cs.map((c) => c.send(String(i), port, '127.0.0.1')));
    await new Promise((r) => setTimeout(r, gapMs));
  }
}

/**
 * 2 workers, 64 buckets, burn handler with worker 1's packets costing more; 256 flows (so the hash splits them
 * ~50/50 to begin with) send `rounds` rounds `gapMs` apart. Waits until worker 1 is sent at most `share` of
 * the packets (checked on packets, not on buckets: flows are not spread evenly over 64 buckets) and returns
 * that status, after checking every bucket has exactly one owner.
 */
async function slowWorkerShare(
  o: { costUs: number; slowCostUs: number; gapMs: number; rounds: number; share: number; timeoutMs: number },
  extra: Record<string, unknown>,
): Promise<any> {
  const file = configFile({
    handler: path.join(FIXTURES, 'burn-handler.js'),
    handlerOptions: { costUs: o.costUs, slowWorker: 1, slowCostUs: o.slowCostUs },
    ...extra,
  });
  const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
  running.push(svc);
  for (let i = 0; i < 256; i++) clients.push(await new Client(4).bind('127.0.0.1'));
  let done = false;
  const load = traffic(clients, svc.udpPort, o.rounds, o.gapMs, () => done);
  const st = await waitFor(async () => {
    const s = await svc.status();
    const pps = s.workers[0].pps + s.workers[1].pps;
    return pps > 0 && s.workers[1].pps / pps <= o.share ? s : null;
  }, o.timeoutMs, `worker 1 to get at most ${o.share * 100}% of the packets`, 200).finally(() => { done = true; });
  await load;
  expect(st.workers[0].buckets + st.workers[1].buckets + st.migrations.inFlight).toBe(64);
  return st;
}

describe('balancing', () => {
  it('moves buckets off a worker whose queue passes the limit, at once', async () => {
    const file = configFile({
      handler: path.join(FIXTURES, 'burn-handler.js'),
      handlerOptions: { costUs: 20, slowWorker: 0, slowCostUs: 3000 },
      balancer: { queueLimit: 20, rebalanceInterval: '60s' }, // the periodic balancer stays out of it
    });
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
    running.push(svc);
    for (let i = 0; i < 32; i++) clients.push(await new Client(4).bind('127.0.0.1'));
    const before = (await svc.status()).workers[0].buckets;
    let done = false;
    const load = traffic(clients, svc.udpPort, 400, 5, () => done);
    const st = await waitFor(async () => {
      const s = await svc.status();
      // A bucket in flight belongs to neither worker in the counts: wait for one to land on worker 1.
      return s.workers[0].buckets < before && s.workers[1].buckets > 32 && s.migrations.completed > 0 ? s : null;
    }, 15_000, 'buckets to leave the overloaded worker for the other one').finally(() => { done = true; });
    await load;
    expect(st.overloadSpills).toBeGreaterThan(0);
  });

  it('treats queue drops as overload even when the total queue stays under the limit', async () => {
    const file = configFile({
      handler: path.join(FIXTURES, 'burn-handler.js'),
      handlerOptions: { costUs: 20, slowWorker: 0, slowCostUs: 3000 },
      queue: { flowQueueLimit: 4 },
      balancer: { queueLimit: 100000, rebalanceInterval: '60s' },
    });
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
    running.push(svc);
    for (let i = 0; i < 32; i++) clients.push(await new Client(4).bind('127.0.0.1'));
    const before = (await svc.status()).workers[0].buckets;
    let done = false;
    const load = traffic(clients, svc.udpPort, 400, 5, () => done);
    const st = await waitFor(async () => {
      const s = await svc.status();
      return s.workers[0].buckets < before && s.overloadSpills > 0 ? s : null;
    }, 15_000, 'buckets to leave the worker that drops');
    done = true;
    await load;
    expect(st.workers[0].drops.flow_queue_full).toBeGreaterThan(0);
  });

  it('shifts buckets by measured CPU: a worker with 4x the per-packet cost ends with a smaller share of the packets', async () => {
    // ~2,500 packets/s: about 0.15 + 0.6 cores of handler work, below what 2 shared cores can give, so CPU
    // measures demand (a saturated machine would cap both workers' CPU and hide the difference). Worker 1's
    // packets cost 4x, so the balancer hands its buckets to worker 0 until both spend the same CPU, i.e. worker 1
    // gets ~20% of the packets.
    const st = await slowWorkerShare({ costUs: 100, slowCostUs: 400, gapMs: 100, rounds: 250, share: 0.35, timeoutMs: 20_000 }, {
      balancer: { rebalanceInterval: '300ms', queueLimit: 100000 },
    });
    expect(st.migrations.timeouts).toBe(0);
  });

  it('balances a saturated machine by demand: the worker whose packets cost 4x sheds buckets although both CPUs are capped', async () => {
    // ~5,000 packets/s: ~1.5 cores of work for worker 0 and ~6 for worker 1, more than the 2 shared cores give.
    // Both workers' CPU caps near a core, so CPU alone reads them as equally busy; worker 1's queue grows, and
    // arrivals x CPU per processed packet shows its demand. Equal demand is worker 1 taking ~20% of the packets.
    // (The estimator itself is checked in load-model.test.ts; without it this run reached the 30% only
    // sometimes, by early moves made before both workers saturated.)
    const st = await slowWorkerShare({ costUs: 600, slowCostUs: 2400, gapMs: 40, rounds: 600, share: 0.3, timeoutMs: 25_000 }, {
      // No overload path: only the periodic balancer and its demand estimate may move buckets.
      balancer: { rebalanceInterval: '300ms', queueLimit: 1000000 },
      queue: { flowQueueLimit: 100000 },
    });
    expect(st.overloadSpills).toBe(0);
  });

  it('reads a worker\'s cgroup CPU quota: its index stays at or below it, and follows it into and out of the cgroup', async (ctx) => {
    // A real cgroup (CFS bandwidth, v1 or v2) capping worker 1 at a quarter core. Needs root and a cgroup cpu
    // controller; without them the test is skipped, saying why.
    const cap = createCpuCap(`flowlb-test-${process.pid}`, 0.25, 4000);
    if ('error' in cap) { ctx.skip(`no cgroup CPU cap here: ${cap.error}`); return; }
    try {
      const svc = await startFlowlb(['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn']);
      running.push(svc);
      const before = await svc.status();
      expect(before.workers.map((w: { cpuLimit: number }) => w.cpuLimit)).toEqual([0, 0]);
      cap.apply(before.workers[1].pid);
      // Idle, a worker counts as a full core; under the quota, as a quarter.
      const st = await waitFor(async () => {
        const s = await svc.status();
        return s.workers[1].cpuLimit > 0 && s.workers[1].index < 0.3 ? s : null;
      }, 5000, 'worker 1 to report its quota', 100);
      expect(st.workers[1].cpuLimit).toBeCloseTo(0.25, 6);
      expect(st.workers[0].cpuLimit).toBe(0);
      expect(st.workers[1].index).toBeLessThanOrEqual(0.25 + 1e-9);
      // The uncapped one reads about a core: above the quota by far (0.74 was seen idle on a host loaded by other
      // test files and benchmarks, where an idle event loop waits for a CPU too).
      expect(st.workers[0].index).toBeGreaterThan(0.5);
      expect(await svc.metrics()).toMatch(/^flowlb_worker_cpu_limit_cores\{worker="1"\} 0\.25$/m);
      cap.release();
      const after = await waitFor(async () => {
        const s = await svc.status();
        return s.workers[1].cpuLimit === 0 ? s : null;
      }, 5000, 'worker 1 to report no quota after leaving the cgroup', 100);
      expect(after.workers[1].cpuLimit).toBe(0);
    } finally {
      cap.release();
    }
  });

  it('moves nothing while no worker is busy (balancer.minBusy), and the same uneven load moves buckets with minBusy 0', async () => {
    // Worker 1's packets cost 4x, at a rate that keeps both event loops far below 50% busy. The index sees two
    // full cores either way; the load (packets x CPU per packet) is ~4:1, far outside the dead band.
    const run = async (minBusy: number | undefined): Promise<any> => {
      const file = configFile({
        handler: path.join(FIXTURES, 'burn-handler.js'),
        handlerOptions: { costUs: 20, slowWorker: 1, slowCostUs: 80 },
        balancer: minBusy === undefined ? {} : { minBusy },
      });
      const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
      running.push(svc);
      const cs: Client[] = [];
      for (let i = 0; i < 64; i++) { const c = await new Client(4).bind('127.0.0.1'); cs.push(c); clients.push(c); }
      // Warm-up (cold code and a fresh process read busy for a moment), then the measured window.
      await traffic(cs, svc.udpPort, 50, 20, () => false);
      await new Promise((r) => setTimeout(r, 1000));
      const before = await svc.status();
      await traffic(cs, svc.udpPort, 150, 20, () => false);
      const after = await svc.status();
      return {
        moves: after.migrations.completed - before.migrations.completed,
        // Since start: without the gate the balancer starts moving during the warm-up already, and how many moves
        // are left for the measured window depends on how fast it got there (2-5 seen).
        movesSinceStart: after.migrations.completed,
        rounds: after.rounds - before.rounds,
        idleRounds: after.idleRounds - before.idleRounds,
        elu: Math.max(...after.workers.map((w: any) => w.elu)),
      };
    };
    const gated = await run(undefined);
    const open = await run(0);
    const diag = `default: ${gated.moves} moves, ${gated.idleRounds}/${gated.rounds} idle rounds, ELU ${gated.elu.toFixed(2)}; `
      + `minBusy 0: ${open.moves} moves (${open.movesSinceStart} since start), ${open.idleRounds}/${open.rounds} idle rounds, ELU ${open.elu.toFixed(2)}`;
    expect(gated.idleRounds, diag).toBeGreaterThan(gated.rounds / 2);
    expect(gated.moves, diag).toBeLessThanOrEqual(2);
    expect(open.movesSinceStart, diag).toBeGreaterThanOrEqual(4);
    expect(open.idleRounds, diag).toBeLessThan(open.rounds / 2);
  });

  it('packet mode: an overloaded worker\'s new and queued packets go to the least-loaded worker', async () => {
    const svc = await startPacketMode({ costUs: 10, slowWorker: 0, slowCostUs: 2000 }, 20);
    for (let i = 0; i < 32; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      c.socket.setRecvBufferSize(1 << 20);
      clients.push(c);
    }
    await traffic(clients, svc.udpPort, 60, 5, () => false);
    const sent = 60 * 32;
    // Every packet is answered (spreading loses nothing), and some went around the slow worker.
    await waitFor(() => clients.reduce((a, c) => a + c.replies.length, 0) === sent, 20_000, 'all replies', 100).catch(async (err: Error) => {
      // Say where the missing replies went (one failure seen in a full run, not reproduced since).
      const s = await svc.status();
      const got = clients.reduce((a, c) => a + c.replies.length, 0);
      throw new Error(`${err.message}: ${got}/${sent} replies; primary received ${s.received}, dropped ${JSON.stringify(s.dropped)}; ` +
        `workers ${JSON.stringify(s.workers.map((w: any) => ({ handled: w.handled, replies: w.replies, drops: w.drops, queue: w.queueDepth })))}; ` +
        `spilled ${s.spilledPackets}, shed ${s.shedPackets}`);
    });
    const st = await svc.status();
    expect(st.spilledPackets + st.shedPackets).toBeGreaterThan(0);
    expect(st.workers[0].buckets).toBe(32); // no bucket moved: only packets
  });

  it('packet mode: when every worker is past the limit, queued packets are not handed back and forth', async () => {
    // Both workers at 2 ms a packet get ~6,000 packets/s: both queues pass the limit. Handing queued work to a
    // worker that is itself past the limit moved it back and forth: 28,786 packets shed for 4,720 received, and
    // sheds went on after the traffic stopped (a black-box check).
    const svc = await startPacketMode({ costUs: 2000 }, 20);
    for (let i = 0; i < 32; i++) clients.push(await new Client(4).bind('127.0.0.1'));
    await traffic(clients, svc.udpPort, 30, 5, () => false);
    const sent = 30 * 32;
    await waitFor(() => clients.reduce((a, c) => a + c.replies.length, 0) === sent, 30_000, 'all replies', 100);
    const st = await svc.status();
    expect(st.received).toBe(sent);
    expect(st.shedPackets).toBeLessThan(sent / 2);
    await new Promise((r) => setTimeout(r, 500));
    expect((await svc.status()).shedPackets).toBe(st.shedPackets); // nothing moves once the queues are empty
  });

  it('packet mode with the balancer on: an overloaded worker spills packets, not buckets', async () => {
    // One flow at ~1.5x a worker's capacity: whichever worker owns its bucket is overloaded. Packet mode spreads its
    // packets; the overload path moved the bucket too, back and forth (4 moves in 6 s in a black-box check).
    const svc = await startPacketMode({ costUs: 1000 }, 64, true);
    const c = await heavyClient();
    await traffic(Array<Client>(15).fill(c), svc.udpPort, 200, 10, () => false);
    const sent = 3000;
    await waitFor(async () => { const s = await svc.status(); return s.workers.every((w: any) => w.queueDepth === 0) && s.received === sent; }, 20_000, 'queues empty', 200);
    const st = await svc.status();
    const diag = `overload spills ${st.overloadSpills}, migrations ${st.migrations.completed}, shed ${st.shedPackets}, spilled ${st.spilledPackets}, replies ${c.replies.length}/${sent}`;
    expect(st.overloadSpills, diag).toBe(0);
    expect(st.spilledPackets + st.shedPackets, diag).toBeGreaterThan(0);
    expect(c.replies.length, diag).toBeGreaterThan(sent * 0.9);
  });

  it('packet mode: one heavy flow is shed a share at a time, not its whole queue back and forth', async () => {
    // One flow at ~1.5x a worker's capacity. A shed took the heaviest flow's whole queue (here: all of it) whatever
    // the room asked for, so the other worker got hundreds at once, passed the limit and shed them back: 18,500
    // packets shed for 4,500 received (a black-box check), 17-44% dropped.
    const svc = await startPacketMode({ costUs: 1000 }, 64);
    const c = await heavyClient();
    // 1,500 packets at ~1,500/s (bursts of 15 every 10 ms).
    await traffic(Array<Client>(15).fill(c), svc.udpPort, 100, 10, () => false);
    const sent = 1500;
    await waitFor(async () => { const s = await svc.status(); return s.workers.every((w: any) => w.queueDepth === 0) && s.received === sent; }, 20_000, 'queues empty', 200);
    await new Promise((r) => setTimeout(r, 300));
    const st = await svc.status();
    const diag = `shed ${st.shedPackets}, spilled ${st.spilledPackets}, replies ${c.replies.length}/${sent}, workers ${JSON.stringify(st.workers.map((w: any) => ({ handled: w.handled, drops: w.drops })))}`;
    expect(st.shedPackets, diag).toBeLessThan(sent / 2);
    expect(c.replies.length, diag).toBeGreaterThan(sent * 0.9);
  });
});
