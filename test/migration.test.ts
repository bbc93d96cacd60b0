/**
 * Bucket migration under traffic: no packet of a flow lost or reordered by a move, and the flow's state
 * continues on its new worker. Also a worker killed with SIGKILL under traffic: its buckets move at once,
 * other workers' flows lose nothing, and a replacement comes up and gets load. And the migration timeout: a
 * slow worker that keeps reporting progress gets more time (no loss, no reorder, state carried over); a stopped
 * one times out, and what it hands over late is counted (migration_late drops, flow states imported or lost).
 */
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashTupleStrings, loadHasher, type RawHasher } from '../src/datapath/tuple.js';
import { Client, configFile, FIXTURES, removeConfigFiles, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

let hasher: RawHasher;
beforeAll(async () => { hasher = await loadHasher(); });

const running: Running[] = [];
const clients: Client[] = [];
afterEach(async () => {
  await stopAll(running, clients);
  removeConfigFiles();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function move(svc: Running, bucket: number, to: number): Promise<boolean> {
  const res = await fetch(`http://127.0.0.1:${svc.httpPort}/admin/move?bucket=${bucket}&to=${to}`, { method: 'POST' });
  const body = (await res.json()) as { started: boolean; owner: number | null; migrating: boolean };
  // owner is a worker, or null exactly while the bucket is in flight (never the primary's internal hold lane).
  expect(body.owner === null).toBe(body.migrating);
  return body.started;
}

interface FlowCheck { worker: Set<string>; counts: number[]; seqs: number[] }

function parseReplies(c: Client): FlowCheck {
  const worker = new Set<string>();
  const counts: number[] = [], seqs: number[] = [];
  for (const r of c.replies) {
    const [w, , count, seq] = r.toString().split(' ');
    worker.add(w!);
    counts.push(Number(count));
    seqs.push(Number(seq));
  }
  return { worker, counts, seqs };
}

describe('migration', () => {
  it('moves buckets back and forth under traffic with no loss, no reordering, and state carried over', async () => {
    const BUCKETS = 64;
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', String(BUCKETS), '--no-balance',
      '--handler', path.join(FIXTURES, 'seq-handler.js'), '--log-level', 'warn',
    ]);
    running.push(svc);
    const FLOWS = 40, ROUNDS = 300;
    for (let i = 0; i < FLOWS; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      c.socket.setRecvBufferSize(1 << 20);
      clients.push(c);
    }
    const buckets = clients.map((c) => hashTupleStrings(hasher, '127.0.0.1', c.port, '127.0.0.1', svc.udpPort) & (BUCKETS - 1));
    const moved = [...new Set(buckets)];
    // Traffic: every flow sends ROUNDS packets in order, a round every 2 ms, while buckets keep moving.
    let stopMoves = false;
    let moves = 0;
    const mover = (async () => {
      let k = 0;
      while (!stopMoves && k < 400) {
        const b = moved[k % moved.length]!;
        // Whichever worker does not own it now (a move to the current owner does not start).
        if (await move(svc, b, k % 2) || await move(svc, b, (k + 1) % 2)) moves++;
        k++;
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    for (let seq = 1; seq <= ROUNDS; seq++) {
      await Promise.all(clients.map((c) => c.send(String(seq), svc.udpPort, '127.0.0.1')));
      await new Promise((r) => setTimeout(r, 2));
    }
    stopMoves = true;
    await mover;
    await waitFor(() => clients.every((c) => c.replies.length >= ROUNDS), 10_000, 'every reply');
    let flowsThatMoved = 0;
    for (const c of clients) {
      const { worker, counts, seqs } = parseReplies(c);
      expect(c.replies).toHaveLength(ROUNDS);
      // Replies can cross on the way back (two workers send them), so check what the handler saw: the flow's
      // counter at the time each packet was handled equals the packet's sequence number.
      for (let i = 0; i < seqs.length; i++) expect(counts[i]).toBe(seqs[i]);
      expect([...seqs].sort((a, b) => a - b)).toEqual([...Array(ROUNDS).keys()].map((i) => i + 1));
      if (worker.size > 1) flowsThatMoved++;
    }
    expect(moves).toBeGreaterThan(20);
    expect(flowsThatMoved).toBeGreaterThan(FLOWS / 2);
    const st = await svc.status();
    expect(st.migrations.completed).toBeGreaterThanOrEqual(moves);
    expect(st.migrations.timeouts).toBe(0);
    expect(st.dropped).toEqual({});
  });

  it('survives SIGKILL of a worker under traffic: its buckets move at once, others lose nothing, a replacement takes load', async () => {
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '3', '--buckets', '256', '--no-balance',
      '--handler', path.join(FIXTURES, 'seq-handler.js'), '--log-level', 'error',
    ]);
    running.push(svc);
    const FLOWS = 60;
    for (let i = 0; i < FLOWS; i++) clients.push(await new Client(4).bind('127.0.0.1'));
    const send = async (seq: number): Promise<void> => {
      await Promise.all(clients.map((c) => c.send(String(seq), svc.udpPort, '127.0.0.1')));
    };
    await send(1);
    await waitFor(() => clients.every((c) => c.replies.length === 1), 5000, 'first replies');
    const st0 = await svc.status();
    const victim = st0.workers[0];
    const victimPid = String(victim.pid);
    const onVictim = clients.filter((c) => c.replies[0]!.toString().split(' ')[1] === victimPid);
    const others = clients.filter((c) => !onVictim.includes(c));
    expect(onVictim.length).toBeGreaterThan(0);
    process.kill(victim.pid, 'SIGKILL');
    // Keep sending through the crash.
    for (let seq = 2; seq <= 40; seq++) { await send(seq); await new Promise((r) => setTimeout(r, 5)); }
    await waitFor(() => others.every((c) => c.replies.length === 40), 10_000, 'other workers\' flows answered in full').catch(async (err: Error) => {
      // Say what went missing: per short flow its replies, and where flowlb counted drops, including the kernel's
      // at the front socket. It failed in ~1 of 10 full runs with one whole round missing from every flow and nothing
      // counted: the replacement read the shared front socket until its handler had loaded (fixed in worker.ts;
      // test/service.test.ts "a replacement worker that is still starting ..." reproduces it every time).
      const st = await svc.status();
      const short = others.filter((c) => c.replies.length !== 40).map((c) => `${c.replies.length}: ${parseReplies(c).seqs.join(',')}`);
      throw new Error(`${err.message}; short flows ${JSON.stringify(short)}; dropped ${JSON.stringify(st.dropped)}, kernel ${JSON.stringify(st.kernelDrops)}, ` +
        `workers ${JSON.stringify(st.workers.map((w: any) => ({ pid: w.pid, drops: w.drops, restarts: w.restarts })))}`);
    });
    for (const c of others) {
      const { counts, seqs } = parseReplies(c);
      for (let i = 0; i < seqs.length; i++) expect(counts[i]).toBe(seqs[i]);
    }
    // The dead worker's flows are served again (by survivors, then by the replacement), state restarting.
    await waitFor(() => onVictim.every((c) => c.replies.length >= 30), 10_000, 'victim flows served again');
    const st1 = await waitFor(async () => {
      const st = await svc.status();
      // The replacement gets its buckets back through migrations; wait until they have all landed.
      const owned = st.workers.reduce((a: number, w: { buckets: number }) => a + w.buckets, 0);
      return st.workers[0].ready && st.workers[0].pid !== victim.pid && st.workers[0].buckets > 0
        && st.migrations.inFlight === 0 && owned === 256 ? st : null;
    }, 15_000, 'replacement worker with buckets, every bucket owned');
    expect(st1.workers[0].restarts).toBe(1);
    expect(st1.workers.reduce((a: number, w: { buckets: number }) => a + w.buckets, 0)).toBe(256);
    const health = await fetch(`http://127.0.0.1:${svc.httpPort}/healthz`);
    expect(health.status).toBe(200);
  });
});

describe('every worker killed at once', () => {
  it('reorders nothing: a replacement that is still starting hands over what was queued for it before a bucket leaves', async () => {
    // Both workers die together, so no survivor takes their buckets: packets for them wait in the replacements'
    // channels. The first replacement ready takes its home buckets back from the other, still starting; a direct
    // hand-over (as from a dead worker) let the starting one serve its queued packets of those buckets after the new
    // owner had served later ones: 60-170 packets per run out of order (found by a black-box check).
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--no-balance',
      '--handler', path.join(FIXTURES, 'seq-handler.js'), '--log-level', 'error',
    ]);
    running.push(svc);
    for (let i = 0; i < 16; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      c.socket.setRecvBufferSize(1 << 20);
      clients.push(c);
    }
    const ROUNDS = 400;
    const st0 = await svc.status();
    const pids: number[] = st0.workers.map((w: { pid: number }) => w.pid);
    let killed = false;
    let restored = false;
    for (let seq = 1; seq <= ROUNDS; seq++) {
      await Promise.all(clients.map((c) => c.send(String(seq), svc.udpPort, '127.0.0.1')));
      if (seq === 40) { for (const pid of pids) process.kill(pid, 'SIGKILL'); killed = true; }
      await sleep(5);
      if (killed && !restored && seq % 20 === 0) {
        const st = await svc.status();
        restored = st.workers.every((w: { ready: boolean; pid: number }) => w.ready && !pids.includes(w.pid)) && st.migrations.inFlight === 0;
      }
    }
    expect(restored).toBe(true);
    await sleep(300);
    for (const c of clients) {
      const seqs = parseReplies(c).seqs;
      const behind = seqs.filter((s, i) => i > 0 && s < Math.max(...seqs.slice(0, i)));
      expect(behind, `flow ${c.port}: replies ${seqs.join(',')}`).toEqual([]);
      // Served again after the crash.
      expect(seqs[seqs.length - 1]).toBe(ROUNDS);
    }
  });
});

describe('migration timeout', () => {
  const TIMEOUT_MS = 250;
  const BUCKETS = 64;

  /** 2 workers, static hashing, the seq handler (with its "burn <ms>" packets), a short migration timeout and 50 ms reports. */
  async function service(): Promise<Running> {
    const file = configFile({ balancer: { migrationTimeout: `${TIMEOUT_MS}ms`, reportInterval: '50ms' } });
    const svc = await startFlowlb([
      '--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', String(BUCKETS),
      '--no-balance', '--handler', path.join(FIXTURES, 'seq-handler.js'), '--log-level', 'error',
    ]);
    running.push(svc);
    return svc;
  }

  /** 32 flows send "1" each; returns those worker 0 served (their count is 1 now) and the bucket of a client. */
  async function flowsOnWorker0(svc: Running): Promise<{ on0: Client[]; bucketOf: (c: Client) => number }> {
    const all: Client[] = [];
    for (let i = 0; i < 32; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      c.socket.setRecvBufferSize(1 << 20);
      clients.push(c);
      all.push(c);
    }
    await Promise.all(all.map((c) => c.send('1', svc.udpPort, '127.0.0.1')));
    await waitFor(() => all.every((c) => c.replies.length === 1), 5000, 'first replies');
    const on0 = all.filter((c) => c.replies[0]!.toString().split(' ')[0] === '0');
    const bucketOf = (c: Client): number => hashTupleStrings(hasher, '127.0.0.1', c.port, '127.0.0.1', svc.udpPort) & (BUCKETS - 1);
    return { on0, bucketOf };
  }

  it('gives a slow worker that keeps reporting progress more time: no loss, no reordering, state carried over', async () => {
    const svc = await service();
    const { on0, bucketOf } = await flowsOnWorker0(svc);
    expect(on0.length).toBeGreaterThanOrEqual(5);
    const flows = on0.slice(0, 4);
    const buckets = [...new Set(flows.map(bucketOf))];
    const ballast = on0.slice(4).find((c) => !buckets.includes(bucketOf(c)));
    expect(ballast).toBeDefined();
    // The flows send in order every 10 ms throughout (seq 1 was the first packet).
    let seq = 1;
    let stop = false;
    const sender = (async () => {
      while (!stop) {
        seq++;
        await Promise.all(flows.map((c) => c.send(String(seq), svc.udpPort, '127.0.0.1')));
        await sleep(10);
      }
    })();
    await sleep(300);
    await svc.status(); // the first HTTP request of a process is slow (connection setup): not during the burn
    // Worker 0 gets busy: a 400 ms packet, then (while it runs) a deep queue of expensive packets, 40 x 25 ms, served
    // 16 per drain slice (~400 ms each). Its event loop reads its channel only between slices, so the RELEASE frames
    // written ~60 ms into the first one are read ~340 ms later: past the timeout, while the worker's reports (one
    // per slice) show it working.
    await ballast!.send('burn 400', svc.udpPort, '127.0.0.1');
    await sleep(50);
    await Promise.all([...Array(40).keys()].map(() => ballast!.send('burn 25', svc.udpPort, '127.0.0.1')));
    await sleep(10);
    const started = await Promise.all(buckets.map((b) => move(svc, b, 1)));
    expect(started.every(Boolean)).toBe(true);
    await sleep(1500);
    stop = true;
    await sender;
    const sent = seq;
    await waitFor(() => flows.every((c) => c.replies.length >= sent) && ballast!.replies.length >= 42, 15_000, 'every reply').catch(async (err: Error) => {
      const st = await svc.status();
      throw new Error(`${err.message}; replies ${flows.map((c) => c.replies.length).join(',')} of ${sent}; migrations ${JSON.stringify(st.migrations)}`);
    });
    for (const c of flows) {
      const { worker, counts, seqs } = parseReplies(c);
      expect(c.replies).toHaveLength(sent);
      for (let i = 0; i < seqs.length; i++) expect(counts[i]).toBe(seqs[i]);
      expect([...seqs].sort((a, b) => a - b)).toEqual([...Array(sent).keys()].map((i) => i + 1));
      expect(worker.has('1')).toBe(true); // it did move
    }
    const st = await svc.status();
    expect(st.migrations.timeouts).toBe(0);
    expect(st.migrations.completed).toBe(buckets.length);
    const records = st.migrations.recent.filter((r: { bucket: number }) => buckets.includes(r.bucket));
    expect(records.map((r: { outcome: string }) => r.outcome)).toEqual(buckets.map(() => 'done'));
    // Not vacuous: the release came after the timeout had fired at least once.
    expect(Math.max(...records.map((r: { durationMs: number }) => r.durationMs))).toBeGreaterThan(TIMEOUT_MS);
    expect(st.migrations.extended).toBeGreaterThan(0);
    expect(st.dropped).toEqual({});
    for (const w of st.workers) expect(w.drops).toEqual({});
  }, 30_000);

  it('times out a stopped worker; after SIGCONT its late hand-over is counted and its flow states reach the new owner', async () => {
    const svc = await service();
    const { on0, bucketOf } = await flowsOnWorker0(svc);
    expect(on0.length).toBeGreaterThanOrEqual(4);
    const buckets = [...new Set(on0.slice(0, 6).map(bucketOf))];
    // Every flow of those buckets (another of the 32 may share one): all of them move.
    const flows = on0.filter((c) => buckets.includes(bucketOf(c)));
    const half = Math.ceil(flows.length / 2);
    const quiet = flows.slice(0, half), fresh = flows.slice(half);
    const sendAll = async (cs: Client[], payload: string): Promise<void> => {
      await Promise.all(cs.map((c) => c.send(payload, svc.udpPort, '127.0.0.1')));
    };
    for (let s = 2; s <= 5; s++) {
      await sendAll(flows, String(s));
      await waitFor(() => flows.every((c) => c.replies.length === s), 5000, `replies ${s}`);
    }
    const st0 = await svc.status();
    const pidA = st0.workers[0].pid as number;
    process.kill(pidA, 'SIGSTOP');
    try {
      // Two packets per flow wait in worker 0's channel, then the RELEASE frames.
      await sendAll(flows, '6');
      await sendAll(flows, '7');
      await sleep(50);
      const started = await Promise.all(buckets.map((b) => move(svc, b, 1)));
      expect(started.every(Boolean)).toBe(true);
      // Held while the bucket moves, then delivered to worker 1, which starts these flows afresh.
      await sendAll(fresh, '8');
      await waitFor(async () => (await svc.status()).migrations.timeouts === buckets.length, 4 * TIMEOUT_MS + 2000, 'the migrations to time out');
      await waitFor(() => fresh.every((c) => c.replies.length === 6), 5000, 'held packets answered by worker 1');
      for (const c of fresh) expect(c.replies[5]!.toString().split(' ')).toEqual(['1', expect.any(String), '1', '8']);
    } finally {
      process.kill(pidA, 'SIGCONT');
    }
    // Worker 0 wakes up, reads packets 6 and 7 and the RELEASE frames, and hands everything over: too late.
    const st1 = await waitFor(async () => {
      const st = await svc.status();
      return st.migrations.lateReleases === buckets.length && (st.workers[0].drops.migration_late ?? 0) === 2 * flows.length
        && st.migrations.lateFlows.imported + st.migrations.lateFlows.lost === flows.length ? st : null;
    }, 5000, 'late releases counted').catch(async (err: Error) => {
      const st = await svc.status();
      throw new Error(`${err.message}; migrations ${JSON.stringify({ ...st.migrations, recent: undefined })}, worker drops ${JSON.stringify(st.workers.map((w: any) => w.drops))}`);
    });
    // Quiet flows had no state on worker 1: theirs is imported. Fresh ones had: worker 1's newer state stays.
    expect(st1.migrations.lateFlows).toEqual({ imported: quiet.length, lost: fresh.length });
    await sendAll(flows, '9');
    await waitFor(() => quiet.every((c) => c.replies.length === 6) && fresh.every((c) => c.replies.length === 7), 5000, 'replies 9');
    for (const c of quiet) expect(c.replies[5]!.toString().split(' ')).toEqual(['1', expect.any(String), '6', '9']);
    for (const c of fresh) expect(c.replies[6]!.toString().split(' ')).toEqual(['1', expect.any(String), '2', '9']);
    // Nobody crashed, and every datagram received is accounted for: handled, or dropped under a named reason.
    const st = await waitFor(async () => {
      const s = await svc.status();
      const handled = s.workers.reduce((a: number, w: { handled: number }) => a + w.handled, 0);
      return handled === 32 + 4 * flows.length + fresh.length + flows.length ? s : null;
    }, 5000, 'workers to report every packet handled');
    expect(svc.proc.exitCode).toBeNull();
    for (const w of st.workers) { expect(w.ready).toBe(true); expect(w.restarts).toBe(0); }
    const sum = (o: Record<string, number>): number => Object.values(o).reduce((a, x) => a + x, 0);
    const handled = st.workers.reduce((a: number, w: { handled: number }) => a + w.handled, 0);
    const workerDrops = st.workers.reduce((a: number, w: { drops: Record<string, number> }) => a + sum(w.drops), 0);
    const dispatched = st.workers.reduce((a: number, w: { dispatchedPackets: number }) => a + w.dispatchedPackets, 0);
    expect(st.received).toBe(32 + 7 * flows.length + fresh.length);
    expect(st.dropped).toEqual({});
    expect(st.received).toBe(dispatched + sum(st.dropped) + st.held);
    expect(st.received).toBe(handled + workerDrops + sum(st.dropped));
    expect(st.workers[0].drops).toEqual({ migration_late: 2 * flows.length });
  }, 30_000);
});
