/**
 * The core service end to end, as a user runs it: the compiled CLI, real processes, real UDP on 127.0.0.1
 * and ::1. Every wait has a deadline.
 */
import { spawn } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, Client, configFile, FIXTURES, removeConfigFiles, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

const running: Running[] = [];
const clients: Client[] = [];

afterEach(async () => {
  await stopAll(running, clients);
  removeConfigFiles();
});

async function start(args: string[]): Promise<Running> {
  // Defaults a test may override (flowlb refuses a flag given twice).
  const defaults = [['--http', '127.0.0.1:0'], ['--log-level', 'warn']].filter(([flag]) => !args.includes(flag!)).flat() as string[];
  const r = await startFlowlb([...defaults, ...args]);
  running.push(r);
  return r;
}

async function client(family: 4 | 6 = 4): Promise<Client> {
  const c = await new Client(family).bind(family === 6 ? '::1' : '127.0.0.1');
  c.socket.setRecvBufferSize(4 * 1024 * 1024);
  clients.push(c);
  return c;
}

function isAlive(pid: number): boolean {
  try { process.kill(pid, 0); return true; } catch { return false; }
}

/** Alive and not a zombie (an orphan's zombie stays until whoever inherited it reaps it). */
function isRunning(pid: number): boolean {
  try { return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; }
}

describe('flow affinity', () => {
  it('keeps every packet of each of 200 flows on one worker, and every worker gets flows', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '4', '--handler', path.join(FIXTURES, 'seq-handler.js'), '--no-balance']);
    const FLOWS = 200, PACKETS = 20;
    const cs: Client[] = [];
    for (let i = 0; i < FLOWS; i++) cs.push(await client());
    // Rounds of one packet per flow keep the burst within socket buffers; order per flow is what matters.
    for (let seq = 1; seq <= PACKETS; seq++) {
      await Promise.all(cs.map((c) => c.send(String(seq), svc.udpPort, '127.0.0.1')));
      await waitFor(() => cs.every((c) => c.replies.length >= seq), 5000, `replies of round ${seq}`, 2);
    }
    const flowsPerWorker = new Map<string, number>();
    for (const c of cs) {
      const parts = c.replies.map((r) => r.toString().split(' '));
      expect(parts).toHaveLength(PACKETS);
      const workers = new Set(parts.map((p) => `${p[0]}/${p[1]}`));
      expect(workers.size).toBe(1);
      // The per-flow counter lives in the worker: count == sequence means no loss and no reordering.
      parts.forEach((p, i) => { expect(p[2]).toBe(String(i + 1)); expect(p[3]).toBe(String(i + 1)); });
      const w = [...workers][0]!;
      flowsPerWorker.set(w, (flowsPerWorker.get(w) ?? 0) + 1);
    }
    expect(flowsPerWorker.size).toBe(4);
    for (const n of flowsPerWorker.values()) expect(n).toBeGreaterThan(20);
    const st = await svc.status();
    expect(st.workers.map((w: { flowsActive: number }) => w.flowsActive).reduce((a: number, b: number) => a + b, 0)).toBe(FLOWS);
  });
});

describe('echo', () => {
  const SIZES = [1, 64, 1472, 8972, 32768, 65507];
  for (const family of [4, 6] as const) {
    it(`round-trips payloads of 1 to 65,507 bytes over IPv${family}`, async () => {
      const host = family === 6 ? '::1' : '127.0.0.1';
      const svc = await start(['--listen', family === 6 ? '[::1]:0' : '127.0.0.1:0', '--workers', '2']);
      const c = await client(family);
      for (const size of SIZES) {
        const payload = Buffer.alloc(size);
        for (let i = 0; i < size; i++) payload[i] = (i * 31 + size) & 0xff;
        const before = c.replies.length;
        await c.send(payload, svc.udpPort, host);
        await waitFor(() => c.replies.length > before, 5000, `echo of ${size} bytes`);
        const reply = c.replies[before]!;
        expect(reply.length).toBe(size);
        expect(reply.equals(payload)).toBe(true);
      }
      // The reply comes from the service's own address and port.
      const from = await new Promise<dgram.RemoteInfo>((resolve) => {
        c.socket.once('message', (_m, rinfo) => resolve(rinfo));
        void c.send('x', svc.udpPort, host);
      });
      expect(from.port).toBe(svc.udpPort);
      expect(from.address).toBe(host);
    });
  }
});

describe('bad input', () => {
  it('counts a handler that throws and keeps serving', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--handler', path.join(FIXTURES, 'throwing-handler.js')]);
    const c = await client();
    await c.send('boom', svc.udpPort, '127.0.0.1');
    await c.send('after', svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.some((r) => r.toString() === 'after'), 5000, 'reply after the throw');
    expect(c.replies.map(String)).toEqual(['after']);
    await waitFor(async () => {
      const st = await svc.status();
      return st.workers.some((w: { drops: Record<string, number> }) => w.drops.handler_error === 1);
    }, 3000, 'handler_error counted');
  });

  it('a worker stuck in its handler is reported down (/healthz 503, /status stalled, flowlb_worker_up 0)', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--handler', path.join(FIXTURES, 'hang-handler.js')]);
    expect((await fetch(`${svc.httpUrl}/healthz`)).status).toBe(200);
    const c = await client();
    const where = await (await fetch(`${svc.httpUrl}/where?src=127.0.0.1:${c.socket.address().port}`)).json();
    const stuckPid: number = (await svc.status()).workers[where.worker].pid;
    try {
      await c.send('hang', svc.udpPort, '127.0.0.1');
      // It used to stay "ready", healthy and up forever while the flows of its buckets got no answer.
      await waitFor(async () => (await fetch(`${svc.httpUrl}/healthz`)).status === 503, 8000, '/healthz 503');
      const st = await svc.status();
      expect(st.workers.map((w: { stalled: boolean }) => w.stalled)).toEqual([0, 1].map((l) => l === where.worker));
      expect(st.workers[where.worker].reportAgeMs).toBeGreaterThan(2000);
      expect(await svc.metrics()).toContain(`flowlb_worker_up{worker="${where.worker}"} 0`);
      expect(await svc.metrics()).toContain(`flowlb_worker_up{worker="${1 - where.worker}"} 1`);
    } finally {
      // A worker spinning in its handler outlives its primary (stopAll SIGKILLs it) by the watchdog's 3 s: kill it now.
      try { process.kill(stuckPid, 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('a worker silent past stallTimeout is killed and replaced; its flows are answered again, the other worker\'s all along', async () => {
    const file = configFile({ stallTimeout: '2500ms', handler: path.join(FIXTURES, 'hang-handler.js') });
    let stuckPid = 0;
    try {
      const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--config', file]);
      // One client per worker: the one whose flow hangs its worker, and one on the other worker.
      const cs: Client[] = [];
      const lanes: number[] = [];
      while (!lanes.includes(0) || !lanes.includes(1)) {
        const c = await client();
        const w = (await (await fetch(`${svc.httpUrl}/where?src=127.0.0.1:${c.port}`)).json()).worker as number;
        if (!lanes.includes(w)) { cs[w] = c; lanes.push(w); }
        if (lanes.length > 40) throw new Error('no flow for both workers in 40 tries');
      }
      const stuck = 0, other = 1;
      stuckPid = (await svc.status()).workers[stuck].pid;
      await cs[stuck]!.send('hang', svc.udpPort, '127.0.0.1');
      // The other worker answers throughout: one packet every 100 ms until the stuck one is replaced.
      let sent = 0;
      const st = await waitFor(async () => {
        await cs[other]!.send(`o${sent++}`, svc.udpPort, '127.0.0.1');
        const s = await svc.status();
        return s.workers[stuck].restarts === 1 && s.workers[stuck].ready && s.workers[stuck].pid !== stuckPid ? s : null;
      }, 12_000, 'the stuck worker to be killed and replaced', 100);
      expect(st.stallKills).toBe(1);
      expect(isAlive(stuckPid)).toBe(false);
      // The replaced lane serves the hanging flow's bucket again; the other worker lost nothing.
      await waitFor(async () => {
        await cs[stuck]!.send('again', svc.udpPort, '127.0.0.1');
        return cs[stuck]!.replies.some((r) => r.toString() === 'again') ? true : null;
      }, 5000, 'a reply from the replacement worker', 200);
      await waitFor(async () => (cs[other]!.replies.length === sent ? true : null), 3000, `all ${sent} replies of the other worker's flow`, 50);
      expect(st.workers[other].restarts).toBe(0);
    } finally {
      try { if (stuckPid) process.kill(stuckPid, 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('a worker stuck in its handler ends by itself when its primary is SIGKILLed (orphan watchdog)', async () => {
    const file = configFile({ stallTimeout: 'off', handler: path.join(FIXTURES, 'hang-handler.js') });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--config', file]);
    const c = await client();
    const where = await (await fetch(`${svc.httpUrl}/where?src=127.0.0.1:${c.port}`)).json();
    const pids: number[] = (await svc.status()).workers.map((w: { pid: number }) => w.pid);
    try {
      await c.send('hang', svc.udpPort, '127.0.0.1');
      await c.send('ping', svc.udpPort, '127.0.0.1');
      await new Promise((r) => setTimeout(r, 500));
      expect(c.replies).toEqual([]); // stuck: it cannot even answer the next packet
      expect(isRunning(pids[where.worker]!)).toBe(true);
      svc.proc.kill('SIGKILL');
      // Without the watchdog thread the stuck worker spun for ever (nobody left to apply the stall timeout).
      await waitFor(() => pids.every((p) => !isRunning(p)), 10_000, 'both workers of the killed primary to end', 100);
    } finally {
      for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('a replacement worker that is still starting takes no datagram meant for the primary (none lost while it loads)', async () => {
    // Worker 1 (and its replacement) spends 1.5 s in its handler's init; the front socket reaches it at once.
    const file = configFile({ handler: path.join(FIXTURES, 'slow-start-handler.js'), handlerOptions: { startMs: 0, perWorkerMs: 1500 } });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--config', file]);
    const victim: number = (await svc.status()).workers[1].pid;
    process.kill(victim, 'SIGKILL');
    await waitFor(async () => ((await svc.status()).workers[1].pid !== victim ? true : null), 5000, 'a replacement forked', 20);
    // Its buckets went to worker 0 at once; send while the replacement loads its handler.
    const cs: Client[] = [];
    for (let i = 0; i < 8; i++) cs.push(await client());
    const ROUNDS = 60;
    for (let r = 0; r < ROUNDS; r++) {
      await Promise.all(cs.map((c) => c.send(`r${r}`, svc.udpPort, '127.0.0.1')));
      await new Promise((res) => setTimeout(res, 10));
    }
    // Before the fix the starting worker's copy of the front socket read part of these and dropped them uncounted.
    await waitFor(() => cs.every((c) => c.replies.length === ROUNDS), 5000, 'every reply', 20).catch(async (err: Error) => {
      const st = await svc.status();
      throw new Error(`${err.message}: replies ${cs.map((c) => c.replies.length).join(',')} of ${ROUNDS}; received by flowlb ${st.received}`);
    });
  });

  it('POST /admin/move without its parameters (or not in decimal) is a 400, not a move of bucket 0 to worker 0; other methods 405', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance']);
    const post = async (query: string): Promise<number> => (await fetch(`${svc.httpUrl}/admin/move${query}`, { method: 'POST' })).status;
    expect(await post('')).toBe(400);
    expect(await post('?bucket=5')).toBe(400);
    expect(await post('?to=1')).toBe(400);
    expect(await post('?bucket=&to=')).toBe(400);
    expect(await post('?bucket=0x10&to=1')).toBe(400);
    expect(await post('?bucket=1e2&to=1')).toBe(400);
    expect((await svc.status()).migrations.completed).toBe(0);
    // Other methods: 405 naming the one allowed.
    const get = await fetch(`${svc.httpUrl}/admin/move?bucket=5&to=1`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    const del = await fetch(`${svc.httpUrl}/status`, { method: 'DELETE' });
    expect(del.status).toBe(405);
    expect(del.headers.get('allow')).toBe('GET, HEAD');
    // Both parameters given: started (202), or 409 if worker 1 owns bucket 5 already.
    expect([202, 409]).toContain(await post('?bucket=5&to=1'));
  });

  it('static hashing (--no-balance) still shows every worker\'s index and share, a replacement\'s too', async () => {
    // They were computed only when a worker died: before any crash every index read its initial value whatever the
    // load, and a replacement read index 0 and share 0 for as long as it ran.
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--rebalance-interval', '200ms']);
    const victim: number = (await svc.status()).workers[1].pid;
    process.kill(victim, 'SIGKILL');
    await waitFor(async () => { const w = (await svc.status()).workers[1]; return w.ready && w.pid !== victim; }, 10_000, 'replacement ready');
    await waitFor(async () => (await svc.status()).workers.every((w: { index: number }) => w.index > 0), 5000, 'both indexes computed');
    const st = await svc.status();
    const shares = st.workers.map((w: { targetShare: number }) => w.targetShare);
    expect(shares.every((x: number) => x > 0.2 && x < 0.8), JSON.stringify(shares)).toBe(true);
    expect(shares[0] + shares[1]).toBeCloseTo(1, 6);
    // Nothing else moved: the replacement got its own buckets back (static hashing), and that is all.
    await waitFor(async () => (await svc.status()).workers.every((w: { buckets: number }) => w.buckets === 512), 10_000, 'home buckets back');
  });

  it('dispatch latency includes the time a packet queues in the worker, as the client sees it', async () => {
    // One flow at ~1.4x what a 2 ms handler serves: the worker's queue grows and the client's RTT with it. The
    // histogram was sampled when a batch was read from the channel, not when its packets were served: p99 4.5 ms
    // against a client RTT p50 of 1.5 s (a black-box check).
    const file = configFile({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 2000 } });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '1', '--no-balance', '--config', file, '--report-interval', '100ms']);
    const c = await client();
    const sentAt: number[] = [];
    const rtt: number[] = [];
    c.socket.on('message', (m) => { rtt.push(performance.now() - sentAt[Number(m.toString())]!); });
    for (let i = 0; i < 700; i++) {
      sentAt.push(performance.now());
      await c.send(String(i), svc.udpPort, '127.0.0.1');
      if (i % 7 === 6) await new Promise((r) => setTimeout(r, 10));
    }
    await waitFor(() => rtt.length === 700, 15_000, 'every reply');
    rtt.sort((a, b) => a - b);
    const rttMedianMs = rtt[350]!;
    await waitFor(async () => (await svc.status()).workers[0].handled >= 700, 5000, 'report with every packet');
    await new Promise((r) => setTimeout(r, 300));
    const text = await svc.metrics();
    const sum = Number(/^flowlb_dispatch_latency_seconds_sum (\S+)/m.exec(text)![1]);
    const count = Number(/^flowlb_dispatch_latency_seconds_count (\S+)/m.exec(text)![1]);
    const meanMs = (sum / count) * 1000;
    const diag = `client RTT median ${rttMedianMs.toFixed(1)} ms; flowlb latency mean ${meanMs.toFixed(1)} ms over ${count} packets`;
    expect(rttMedianMs, diag).toBeGreaterThan(50); // the queue really built up
    // One packet timed at a time, each standing for the packets that came while it waited: the count is about the
    // packets received, and the mean near the clients' (unweighted, 9 samples gave a mean of 117 ms against 293).
    expect(count, diag).toBeGreaterThan(500);
    expect(meanMs, diag).toBeGreaterThan(rttMedianMs / 2);
    expect(meanMs, diag).toBeLessThan(rtt[699]!); // never more than a client waited
  });

  it('estimates the packets lost with a worker that was killed: its channel and queue (flowlb_worker_lost_packets_total)', async () => {
    // They were counted nowhere: 2,513 of 9,600 lost to a stalled-then-killed worker, every drop reason 0 (a
    // black-box check). One worker, 5 ms a packet: 300 packets queue up, then SIGKILL with most of them unserved.
    const file = configFile({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 5000 } });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '1', '--no-balance', '--config', file, '--report-interval', '100ms']);
    const c = await client();
    for (let i = 0; i < 300; i++) await c.send(String(i), svc.udpPort, '127.0.0.1');
    // Some served, and a report since the burst arrived (received 300), then kill.
    await waitFor(async () => { const w = (await svc.status()).workers[0]; return w.handled + w.queueDepth === 300 && c.replies.length >= 20; }, 10_000, 'a report with the burst');
    const victim: number = (await svc.status()).workers[0].pid;
    process.kill(victim, 'SIGKILL');
    await waitFor(async () => { const w = (await svc.status()).workers[0]; return w.ready && w.pid !== victim; }, 10_000, 'replacement ready');
    await new Promise((r) => setTimeout(r, 200));
    const lostAtClient = 300 - c.replies.length;
    const st = await svc.status();
    const text = await svc.metrics();
    const metric = Number(/^flowlb_worker_lost_packets_total\{worker="0"\} (\S+)/m.exec(text)![1]);
    const diag = `client lost ${lostAtClient}, estimate ${metric}, status ${st.workers[0].lostOnExit}`;
    expect(lostAtClient, diag).toBeGreaterThan(100);
    expect(st.workers[0].lostOnExit, diag).toBe(metric);
    // High by at most what it served after its last report: 100 ms of 5 ms packets, with room for a slow report.
    expect(metric, diag).toBeGreaterThanOrEqual(lostAtClient);
    expect(metric, diag).toBeLessThanOrEqual(lostAtClient + 40);
  });

  it('does not count a queue the killed worker had handed over (a migration just before the kill) as lost with it', async () => {
    // The estimate took the queue of the worker's last report: a deep queue handed to the bucket's new owner 30 ms
    // before the kill, all served there, was counted lost (600 of 0). What the primary got back since the report
    // is taken off now.
    const file = configFile({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 4000 } });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--config', file, '--report-interval', '250ms']);
    const c = await client();
    c.socket.setRecvBufferSize(1 << 20);
    const where = await (await fetch(`${svc.httpUrl}/where?src=127.0.0.1:${c.socket.address().port}`)).json();
    for (let i = 0; i < 300; i++) await c.send(String(i), svc.udpPort, '127.0.0.1');
    const from: number = where.worker, to = 1 - from;
    await waitFor(async () => { const w = (await svc.status()).workers[from]; return w.queueDepth > 200; }, 10_000, 'a deep queue reported');
    const victim: number = (await svc.status()).workers[from].pid;
    const moved = await fetch(`${svc.httpUrl}/admin/move?bucket=${where.bucket}&to=${to}`, { method: 'POST' });
    expect(moved.status).toBe(202);
    await waitFor(async () => (await svc.status()).migrations.completed === 1, 5000, 'the move done');
    process.kill(victim, 'SIGKILL');
    await waitFor(async () => { const w = (await svc.status()).workers[from]; return w.ready && w.pid !== victim; }, 10_000, 'replacement ready');
    await waitFor(() => c.replies.length >= 280, 10_000, 'the handed-over queue served by the new owner');
    const st = await svc.status();
    const diag = `replies ${c.replies.length}/300, lostOnExit ${st.workers[from].lostOnExit}, drops ${JSON.stringify(st.droppedTotal)}`;
    // It served a few packets between its last report and the hand-over: those are all it can be high by.
    expect(st.workers[from].lostOnExit, diag).toBeLessThan(300 - c.replies.length + 70);
  });

  it('counts datagrams larger than --max-datagram as oversize and keeps serving', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '1', '--max-datagram', '1000']);
    const c = await client();
    await c.send(Buffer.alloc(2000), svc.udpPort, '127.0.0.1');
    await c.send('small', svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length === 1, 5000, 'reply to the small datagram');
    expect(c.replies[0]!.toString()).toBe('small');
    const st = await svc.status();
    expect(st.dropped.oversize).toBe(1);
  });
});

describe('shutdown', () => {
  it('exits 0 on SIGTERM within the bound and leaves no worker behind', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2']);
    const c = await client();
    await c.send('x', svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length === 1, 5000, 'echo');
    const pids: number[] = (await svc.status()).workers.map((w: { pid: number }) => w.pid);
    expect(pids.every(isAlive)).toBe(true);
    const t0 = Date.now();
    const code = await svc.stop('SIGTERM');
    expect(code).toBe(0);
    expect(Date.now() - t0).toBeLessThan(6000);
    await waitFor(() => pids.every((p) => !isAlive(p)), 3000, 'workers gone');
  });

  it('a worker whose primary is SIGKILLed exits within seconds even with a deep queue of expensive packets', async () => {
    // 5 ms per packet and 3,000 queued: 15 s of work that a stopping worker must not insist on finishing.
    const file = configFile({
      handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 5000 },
      queue: { flowQueueLimit: 100000 }, balancer: { queueLimit: 1000000 },
    });
    const svc = await start(['--config', file, '--listen', '127.0.0.1:0', '--workers', '1']);
    const c = await client();
    for (let i = 0; i < 3000; i++) c.socket.send('x', svc.udpPort, '127.0.0.1');
    await waitFor(async () => ((await svc.status()).workers[0].queueDepth > 500), 10_000, 'a deep queue');
    const pid: number = (await svc.status()).workers[0].pid;
    await svc.stop('SIGKILL');
    await waitFor(() => !isAlive(pid), 5000, 'the orphaned worker to exit');
  });

  it('workers ignore SIGHUP (a hangup or `kill -HUP` reaches the whole process group): same workers, every packet answered', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2']);
    const c = await client();
    const pids: number[] = (await svc.status()).workers.map((w: { pid: number }) => w.pid);
    for (const p of pids) process.kill(p, 'SIGHUP');
    // The default action killed every worker (replacements came, packets in their pipes were lost).
    for (let i = 0; i < 20; i++) { await c.send(`p${i}`, svc.udpPort, '127.0.0.1'); await new Promise((r) => setTimeout(r, 10)); }
    await waitFor(() => c.replies.length === 20, 5000, 'every reply');
    expect(pids.every(isAlive)).toBe(true);
    const st = await svc.status();
    expect(st.workers.map((w: { pid: number; restarts: number }) => [w.pid, w.restarts])).toEqual(pids.map((p) => [p, 0]));
  });

  it('a second stop signal exits at once and takes every worker with it, a stuck one too', async () => {
    const file = configFile({ stallTimeout: 'off', handler: path.join(FIXTURES, 'hang-handler.js') });
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2', '--no-balance', '--config', file]);
    const c = await client();
    const pids: number[] = (await svc.status()).workers.map((w: { pid: number }) => w.pid);
    try {
      await c.send('hang', svc.udpPort, '127.0.0.1');
      await new Promise((r) => setTimeout(r, 300));
      const exited = new Promise<number | null>((resolve) => svc.proc.once('exit', (code) => resolve(code)));
      svc.proc.kill('SIGINT'); // the stuck worker cannot stop: the shutdown waits for it
      await new Promise((r) => setTimeout(r, 500));
      svc.proc.kill('SIGINT');
      expect(await exited).toBe(1);
      // Before, the stuck worker lived on until its orphan watchdog killed it (~3 s).
      await waitFor(() => pids.every((p) => !isRunning(p)), 1000, 'no worker left', 20);
    } finally {
      for (const p of pids) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    }
  });

  it('gives up on a lane that crashes more than 5 times in 30 s: /status shows it without a process, /healthz 503', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '1', '--handler', path.join(FIXTURES, 'exit-handler.js')]);
    const c = await client();
    for (let crash = 1; crash <= 6; crash++) {
      await waitFor(async () => (await svc.status()).workers[0].ready === true, 10_000, `worker ready before crash ${crash}`);
      await c.send('exit', svc.udpPort, '127.0.0.1');
      await waitFor(async () => (await svc.status()).workers[0].ready === false, 5000, `crash ${crash} seen`);
    }
    await new Promise((r) => setTimeout(r, 1000));
    const st = await svc.status();
    // It used to show the dead process's pid.
    expect(st.workers[0]).toMatchObject({ pid: null, ready: false });
    expect((await fetch(`${svc.httpUrl}/healthz`)).status).toBe(503);
    expect(svc.stderr()).toMatch(/worker keeps crashing; not restarting it/);
  });

  it('exits 0 on SIGINT', async () => {
    const svc = await start(['--listen', '127.0.0.1:0', '--workers', '2']);
    expect(await svc.stop('SIGINT')).toBe(0);
  });

  it('serves a deep queue on SIGTERM for most of shutdownTimeout, not one second', async () => {
    // 3 ms a packet, 600 queued: 1.8 s of work, inside the default 5 s. The worker gave up after a fixed second
    // (1,929 packets, 3 s of work, abandoned after 1.05 s in a black-box check).
    const file = configFile({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 3000 } });
    const svc = await start(['--config', file, '--listen', '127.0.0.1:0', '--workers', '1', '--no-balance']);
    const c = await client();
    c.socket.setRecvBufferSize(1 << 20);
    for (let i = 0; i < 600; i++) await c.send(String(i), svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length >= 1, 5000, 'the first reply');
    const code = await svc.stop('SIGTERM');
    expect(code).toBe(0);
    await new Promise((r) => setTimeout(r, 100));
    expect(c.replies.length).toBe(600);
  });

  it('exits 0 on one stop request delivered twice at once (as `timeout` does: to the process and its group)', async () => {
    // 5 ms per packet: 40 queued packets keep the shutdown busy for ~200 ms, when the repeat arrives.
    const file = configFile({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 5000 } });
    const svc = await start(['--config', file, '--listen', '127.0.0.1:0', '--workers', '1', '--log-level', 'info']);
    const c = await client();
    for (let i = 0; i < 40; i++) c.socket.send(`p${i}`, svc.udpPort, '127.0.0.1');
    // The first reply means the worker is serving: ~39 packets (~195 ms of work) still wait behind it. (Polling
    // /status for the queue depth could miss that short window between two 100 ms reports.)
    await waitFor(() => c.replies.length >= 1, 10_000, 'the first reply');
    const exited = new Promise<number | null>((resolve) => svc.proc.once('exit', (code) => resolve(code)));
    svc.proc.kill('SIGTERM');
    // A few ms apart, as the two kill(2) calls of `timeout` land (two at once would merge into one pending signal).
    await new Promise((r) => setTimeout(r, 30));
    svc.proc.kill('SIGTERM');
    // It used to take the repeat for a second Ctrl-C: "second signal: exiting now", exit 1, queued packets lost.
    expect(await exited, svc.stderr()).toBe(0);
    expect(svc.stderr()).not.toMatch(/second signal/);
    await waitFor(() => c.replies.length === 40, 3000, 'every queued packet answered');
  });

  it('starts when its workers become ready one after another over more than 15 s in all', async () => {
    // Worker 0 is ready after ~8 s, worker 1 after ~16 s: never 15 s without progress, but 16 s in all. A fixed 15 s
    // deadline for all of them failed such a start ("workers did not become ready within 15000 ms"), as it did for
    // 32 workers on 2 busy cores.
    const file = configFile({ handler: path.join(FIXTURES, 'slow-start-handler.js'), handlerOptions: { startMs: 8000, perWorkerMs: 8000 } });
    const t0 = Date.now();
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn'], 40_000);
    running.push(svc);
    expect(Date.now() - t0).toBeGreaterThan(15_000);
    const c = await client();
    await c.send('x', svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length === 1, 5000, 'echo');
  }, 60_000);

  it('exits 0 on SIGTERM while its workers are still starting, and leaves none behind', async () => {
    const proc = spawn(process.execPath, [CLI, 'serve', '--listen', '127.0.0.1:0', '--http', 'off', '--workers', '2',
      '--handler', path.join(FIXTURES, 'slow-start-handler.js'), '--log-level', 'warn'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    const exited = new Promise<[number | null, string | null]>((resolve) => proc.once('exit', (code, signal) => resolve([code, signal])));
    try {
      const children = (): number[] => {
        try { return fs.readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').split(' ').filter(Boolean).map(Number); } catch { return []; }
      };
      // Both workers forked; their handler's init holds them for 3 s, so the service is not listening yet.
      await waitFor(() => children().length === 2, 10_000, 'two workers forked');
      const pids = children();
      expect(out).not.toMatch(/listening/);
      proc.kill('SIGTERM');
      // It used to die of the signal (no handler yet) under workers still starting.
      expect(await exited, `stderr: ${err}`).toEqual([0, null]);
      await waitFor(() => pids.every((p) => !isAlive(p)), 5000, 'workers gone');
      expect(err).not.toMatch(/\n\s+at /);
    } finally {
      proc.kill('SIGKILL');
    }
  });
});

