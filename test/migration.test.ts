/**
 * Bucket migration under traffic: no packet of a flow lost or reordered by a move, and the flow's state
 * continues on its new worker. Also a worker killed with SIGKILL under traffic: its buckets move at once,
 * other workers' flows lose nothing, and a replacement comes up and gets load.
 */
import path from 'node:path';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashTupleStrings, loadHasher, type RawHasher } from '../src/datapath/tuple.js';
import { Client, FIXTURES, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

let hasher: RawHasher;
beforeAll(async () => { hasher = await loadHasher(); });

const running: Running[] = [];
const clients: Client[] = [];
afterEach(() => stopAll(running, clients));

async function move(svc: Running, bucket: number, to: number): Promise<boolean> {
  const res = await fetch(`http://127.0.0.1:${svc.httpPort}/admin/move?bucket=${bucket}&to=${to}`, { method: 'POST' });
  return ((await res.json()) as { started: boolean }).started;
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
      // Say what went missing (one failure in ~10 full runs, not reproduced alone): per short flow its replies,
      // and where flowlb counted drops, including the kernel's at the front socket.
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
