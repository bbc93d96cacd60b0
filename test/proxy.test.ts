/**
 * The proxy handler through the whole service: real backends on loopback, weighted Maglev split, per-flow
 * upstream sockets, idle expiry.
 */
import { execFileSync } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { hashTupleStrings, loadHasher, type RawHasher } from '../src/datapath/tuple.js';
import { Client, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

interface Backend {
  readonly socket: dgram.Socket;
  readonly id: string;
  readonly port: number;
  /** client payload -> upstream source ports seen */
  readonly seen: Map<string, Set<number>>;
  received: number;
}

async function backend(id: string, family: 4 | 6 = 4): Promise<Backend> {
  const socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  const b: Backend = { socket, id, port: 0, seen: new Map(), received: 0 };
  socket.on('message', (msg, rinfo) => {
    b.received++;
    const key = msg.toString().split(' ')[0]!;
    let set = b.seen.get(key);
    if (!set) b.seen.set(key, (set = new Set()));
    set.add(rinfo.port);
    socket.send(Buffer.from(`${id} ${msg.toString()}`), rinfo.port, rinfo.address);
  });
  await new Promise<void>((r) => socket.bind(0, family === 6 ? '::1' : '127.0.0.1', () => r()));
  socket.setRecvBufferSize(4 * 1024 * 1024);
  (b as { port: number }).port = socket.address().port;
  return b;
}

/** `n` IPv4 client sockets on loopback, closed after the test. */
async function bindClients(n: number): Promise<Client[]> {
  const clients: Client[] = [];
  for (let i = 0; i < n; i++) {
    const c = await new Client(4).bind('127.0.0.1');
    clients.push(c);
    closers.push(() => c.close());
  }
  return clients;
}

let hasher: RawHasher;
beforeAll(async () => { hasher = await loadHasher(); });

const running: Running[] = [];
let closers: (() => void)[] = [];
afterEach(async () => {
  for (const c of closers) c();
  closers = [];
  await stopAll(running);
});

describe('proxy', () => {
  it('relays every request, splits flows by weight, keeps each flow on one backend, and closes idle upstreams', async () => {
    const b1 = await backend('A');
    const b2 = await backend('B');
    closers.push(() => b1.socket.close(), () => b2.socket.close());
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--handler', 'proxy', '--log-level', 'warn',
      '--backend', `127.0.0.1:${b1.port}@1`, '--backend', `127.0.0.1:${b2.port}@3`, '--idle-timeout', '1500ms',
    ]);
    running.push(svc);
    const FLOWS = 400, PACKETS = 3;
    const clients: Client[] = [];
    for (let i = 0; i < FLOWS; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      clients.push(c);
      closers.push(() => c.close());
    }
    for (let p = 1; p <= PACKETS; p++) {
      // 100 flows at a time: a loopback burst larger than the socket buffers would be dropped by the kernel.
      for (let i = 0; i < FLOWS; i += 100) {
        await Promise.all(clients.slice(i, i + 100).map((c, j) => c.send(`f${i + j} ${p}`, svc.udpPort, '127.0.0.1')));
        await waitFor(() => clients.slice(i, i + 100).every((c) => c.replies.length >= p), 5000, `responses of packet ${p}`, 2);
      }
    }
    let onA = 0;
    for (const [i, c] of clients.entries()) {
      const replies = c.replies.map(String);
      expect(replies).toHaveLength(PACKETS);
      const ids = new Set(replies.map((r) => r.split(' ')[0]));
      expect(ids.size).toBe(1); // one backend per flow
      expect(replies.map((r) => r.split(' ').slice(1).join(' '))).toEqual([1, 2, 3].map((p) => `f${i} ${p}`));
      if (ids.has('A')) onA++;
    }
    // Weight 1:3 -> 25% on A. Binomial sd over 400 flows is 2.2%; allow 4.5 sd.
    expect(Math.abs(onA / FLOWS - 0.25)).toBeLessThan(0.1);
    // One upstream socket (source port) per flow at the backend.
    for (const b of [b1, b2]) for (const ports of b.seen.values()) expect(ports.size).toBe(1);

    // After the idle timeout the flows and their upstream sockets are gone...
    await waitFor(async () => {
      const st = await svc.status();
      return st.workers.every((w: { flowsActive: number }) => w.flowsActive === 0);
    }, 6000, 'idle flows to expire');
    // ...so the next packet of a flow opens a new upstream socket: the backend sees a new source port.
    const c0 = clients[0]!;
    const before = new Set([...(b1.seen.get('f0') ?? []), ...(b2.seen.get('f0') ?? [])]);
    expect(before.size).toBe(1);
    await c0.send('f0 4', svc.udpPort, '127.0.0.1');
    await waitFor(() => c0.replies.length === 4, 5000, 'response after expiry');
    const after = new Set([...(b1.seen.get('f0') ?? []), ...(b2.seen.get('f0') ?? [])]);
    expect(after.size).toBe(2);
  });

  it('works over IPv6 to IPv6 backends', async () => {
    const b = await backend('V6', 6);
    closers.push(() => b.socket.close());
    const svc = await startFlowlb([
      '--listen', '[::1]:0', '--http', '127.0.0.1:0', '--workers', '2', '--handler', 'proxy', '--log-level', 'warn',
      '--backend', `[::1]:${b.port}`,
    ]);
    running.push(svc);
    const c = await new Client(6).bind('::1');
    closers.push(() => c.close());
    for (let i = 0; i < 10; i++) await c.send(`x ${i}`, svc.udpPort, '::1');
    await waitFor(() => c.replies.length === 10, 5000, 'ipv6 responses');
    expect(c.replies.map(String)).toEqual([...Array(10).keys()].map((i) => `V6 x ${i}`));
  });
});

describe('proxy passive health', () => {
  it('takes a refusing backend out of the table: every flow is served by the live one, and the metrics say so', async () => {
    const live = await backend('A');
    closers.push(() => live.socket.close());
    const gone = dgram.createSocket('udp4');
    await new Promise<void>((r) => gone.bind(0, '127.0.0.1', () => r()));
    const deadPort = gone.address().port;
    await new Promise<void>((r) => gone.close(() => r()));
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--handler', 'proxy', '--log-level', 'warn',
      '--backend', `127.0.0.1:${live.port}`, '--backend', `127.0.0.1:${deadPort}`,
    ]);
    running.push(svc);
    const clients = await bindClients(40);
    // Rounds of one packet per flow (at most 60) until a round is answered in full: the flows Maglev put on the
    // refusing backend lose their first packet or two (the ICMP error comes with the next send), then move.
    let round = 0;
    let answered = 0;
    while (round < 60 && answered < clients.length) {
      round++;
      await Promise.all(clients.map((c, i) => c.send(`f${i} ${round}`, svc.udpPort, '127.0.0.1')));
      await new Promise((r) => setTimeout(r, 50));
      answered = clients.filter((c) => c.replies.map(String).some((r) => r.endsWith(` ${round}`))).length;
    }
    expect(answered).toBe(clients.length);
    // Five more rounds: every one answered by A, in order.
    for (let k = 1; k <= 5; k++) {
      await Promise.all(clients.map((c, i) => c.send(`f${i} ${round + k}`, svc.udpPort, '127.0.0.1')));
      await waitFor(() => clients.every((c) => c.replies.map(String).some((r) => r.endsWith(` ${round + k}`))), 5000, `round ${round + k}`, 2);
    }
    for (const [i, c] of clients.entries()) {
      const tail = c.replies.map(String).slice(-5);
      expect(tail).toEqual([1, 2, 3, 4, 5].map((k) => `A f${i} ${round + k}`));
    }
    const text = await svc.metrics();
    const dead = `127.0.0.1:${deadPort}`;
    const num = (re: RegExp): number => Number(re.exec(text)?.[1] ?? NaN);
    expect(num(new RegExp(`^flowlb_backend_marked_down_total\\{backend="${dead}"\\} (\\d+)$`, 'm'))).toBeGreaterThanOrEqual(1);
    expect(num(new RegExp(`^flowlb_backend_down_workers\\{backend="${dead}"\\} (\\d+)$`, 'm'))).toBeGreaterThanOrEqual(1);
    expect(num(new RegExp(`^flowlb_backend_up\\{backend="${dead}"\\} (\\d+)$`, 'm'))).toBe(0);
    expect(num(new RegExp(`^flowlb_backend_up\\{backend="127\\.0\\.0\\.1:${live.port}"\\} (\\d+)$`, 'm'))).toBe(1);
    expect(num(new RegExp(`^flowlb_backend_down_workers\\{backend="127\\.0\\.0\\.1:${live.port}"\\} (\\d+)$`, 'm'))).toBe(0);
  });
});

describe('proxy flows migrate with their upstream socket', () => {
  it('keeps the backend seeing the same source port after the flow\'s bucket moves to another worker', async () => {
    const b = await backend('M');
    closers.push(() => b.socket.close());
    const BUCKETS = 16;
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--handler', 'proxy', '--log-level', 'warn',
      '--backend', `127.0.0.1:${b.port}`, '--no-balance', '--buckets', String(BUCKETS),
    ]);
    running.push(svc);
    const clients = await bindClients(20);
    const round = async (p: number): Promise<void> => {
      await Promise.all(clients.map((c, i) => c.send(`m${i} ${p}`, svc.udpPort, '127.0.0.1')));
      await waitFor(() => clients.every((c) => c.replies.length >= p), 5000, `responses of round ${p}`);
    };
    await round(1);
    const buckets = [...new Set(clients.map((c) => hashTupleStrings(hasher, '127.0.0.1', c.port, '127.0.0.1', svc.udpPort) & (BUCKETS - 1)))];
    const owners0 = (await svc.status()).workers.map((w: { pid: number }) => w.pid);
    void owners0;
    // Move every bucket in use to the other worker, twice, with traffic between the moves.
    for (let k = 0; k < 2; k++) {
      for (const bucket of buckets) {
        const r0 = await fetch(`http://127.0.0.1:${svc.httpPort}/admin/move?bucket=${bucket}&to=0`, { method: 'POST' });
        if (!((await r0.json()) as { started: boolean }).started) {
          await fetch(`http://127.0.0.1:${svc.httpPort}/admin/move?bucket=${bucket}&to=1`, { method: 'POST' });
        }
      }
      await waitFor(async () => (await svc.status()).migrations.inFlight === 0, 5000, 'migrations to finish');
      await round(k + 2);
    }
    const st = await svc.status();
    expect(st.migrations.completed).toBeGreaterThanOrEqual(buckets.length * 2);
    expect(st.migrations.timeouts).toBe(0);
    // Same upstream source port for every flow, before and after the moves; every response arrived in order.
    for (const [i, c] of clients.entries()) {
      expect(b.seen.get(`m${i}`)?.size).toBe(1);
      expect(c.replies.map(String)).toEqual([1, 2, 3].map((p) => `M m${i} ${p}`));
    }
  });

  it('out of file descriptors (a socket per flow): new flows are counted as connect_failed and the worker keeps reporting', async () => {
    const b = await backend('A');
    closers.push(() => b.socket.close());
    const svc = await startFlowlb([
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '1', '--handler', 'proxy', '--log-level', 'error',
      '--backend', `127.0.0.1:${b.port}`,
    ]);
    running.push(svc);
    const worker: number = (await svc.status()).workers[0].pid;
    const openFds = fs.readdirSync(`/proc/${worker}/fd`).length;
    // Room for 40 more descriptors in the worker: the proxy's upstream sockets use them up.
    execFileSync('prlimit', ['--pid', String(worker), `--nofile=${openFds + 40}:${openFds + 40}`]);
    const clients: Client[] = [];
    for (let i = 0; i < 120; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      clients.push(c);
      closers.push(() => c.close());
      await c.send(`f${i} 1`, svc.udpPort, '127.0.0.1');
    }
    await waitFor(async () => {
      const st = await svc.status();
      return st.workers[0].handled === 120;
    }, 10_000, 'every packet handled and reported');
    const m = await svc.metrics();
    const value = (re: RegExp): number => Number(re.exec(m)?.[1] ?? NaN);
    const answered = clients.filter((c) => c.replies.length === 1).length;
    const failed = value(/^flowlb_proxy_dropped_packets_total\{reason="connect_failed"\} (\d+)$/m);
    expect(answered).toBeGreaterThan(10);
    expect(failed).toBeGreaterThan(10);
    expect(answered + failed).toBe(120);
    // In the cluster's drops under the same reason (they were counted as no_backend, for a healthy backend).
    expect(value(/^flowlb_dropped_packets_total\{reason="connect_failed"\} (\d+)$/m)).toBe(failed);
    expect(value(/^flowlb_dropped_packets_total\{reason="no_backend"\} (\d+)$/m)).toBe(0);
    // Counted as flowlb's own shortage, not as the backend's connect failing.
    expect(value(new RegExp(`^flowlb_backend_errors_total\\{backend="127\\.0\\.0\\.1:${b.port}",kind="local"\\} (\\d+)$`, 'm'))).toBeGreaterThan(10);
    expect(value(new RegExp(`^flowlb_backend_errors_total\\{backend="127\\.0\\.0\\.1:${b.port}",kind="connect"\\} (\\d+)$`, 'm'))).toBe(0);
    // The worker's load report reads its RSS from /proc, which needs a descriptor too: it threw EMFILE every
    // report interval (counted as handler crashes, the report lost) while the worker was out of descriptors.
    expect(value(/^flowlb_handler_crashes_total\{worker="0"\} (\d+)$/m)).toBe(0);
    const before = (await svc.status()).workers[0].cpuLast;
    await new Promise((r) => setTimeout(r, 500));
    expect(value(/^flowlb_worker_up\{worker="0"\} (\d+)$/m)).toBe(1);
    expect((await svc.status()).workers[0].cpuLast).not.toBe(before);
    // Running out of descriptors says nothing about the backend: it is not taken out of the table, and the flows
    // that have an upstream socket keep it (with EMFILE counted as a backend failure, healthy backends were marked
    // down and established flows moved to another backend).
    expect(value(new RegExp(`^flowlb_backend_marked_down_total\\{backend="127\\.0\\.0\\.1:${b.port}"\\} (\\d+)$`, 'm'))).toBe(0);
    expect(value(new RegExp(`^flowlb_backend_up\\{backend="127\\.0\\.0\\.1:${b.port}"\\} (\\d+)$`, 'm'))).toBe(1);
    const established = clients.filter((c) => c.replies.length === 1);
    for (const c of established) await c.send(`${c.replies[0]!.toString().split(' ')[1]} 2`, svc.udpPort, '127.0.0.1');
    await waitFor(() => established.every((c) => c.replies.length === 2), 5000, 'established flows answered again');
  });
});
