/**
 * The built-in `sockperf` handler, driven by the real `sockperf` client (Debian's package; installed by
 * scripts/install-test-deps.sh; without it the test fails, it is not skipped) and by hand-made messages.
 */
import { spawn } from 'node:child_process';
import { afterEach, describe, expect, it } from 'vitest';
import { Client, LOOPBACK, startFlowlb, stopAll, waitFor, type Running } from './support/service.js';

const running: Running[] = [];
const clients: Client[] = [];
afterEach(async () => { await stopAll(running, clients); });

/** Runs a command to its end (bounded by `timeoutMs`), returning its exit code and output. */
function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    p.stderr.on('data', (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('error', (err) => { clearTimeout(timer); reject(new Error(`${cmd}: ${err.message} (scripts/install-test-deps.sh installs it)`)); });
    p.on('exit', (code) => { clearTimeout(timer); resolve({ code, out }); });
  });
}

/** A sockperf message: seqn (u64), flags (u16), len (u32), then padding, network order. */
function message(seq: number, flags: number, size = 14): Buffer {
  const b = Buffer.alloc(size);
  b.writeBigUInt64BE(BigInt(seq), 0);
  b.writeUInt16BE(flags, 8);
  b.writeUInt32BE(size, 10);
  return b;
}

describe('sockperf handler', () => {
  it('answers `sockperf ping-pong` across 2 workers: every message sent is received', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--handler', 'sockperf', '--workers', '2']);
    running.push(svc);
    const r = await run('sockperf', ['ping-pong', '-i', '127.0.0.1', '-p', String(svc.udpPort), '-t', '2', '--mps', '2000'], 30_000);
    expect(r.out).not.toMatch(/No messages were received/);
    // The [Valid Duration] figures (the Total Run's last message may still be in flight when the timer ends).
    const m = /\[Valid Duration\].*SentMessages=(\d+); ReceivedMessages=(\d+)/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(500);
    expect(Number(m![2])).toBe(Number(m![1]));
    expect(r.out).toMatch(/# dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0/);
    expect(r.out).toMatch(/percentile 99\.000 =/);
    expect(r.code).toBe(0);
  });

  it('answers with the client flag cleared, stays silent in throughput mode, and drops what is not sockperf as malformed', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--handler', 'sockperf', '--workers', '1']);
    running.push(svc);
    const c = await new Client().bind('127.0.0.1');
    clients.push(c);
    await c.send(message(7, 3, 64), svc.udpPort, '127.0.0.1'); // ping-pong: wants an answer
    await c.send(message(8, 1), svc.udpPort, '127.0.0.1'); // throughput: no answer
    await c.send('hello', svc.udpPort, '127.0.0.1'); // not sockperf
    await c.send(message(9, 2), svc.udpPort, '127.0.0.1'); // no client flag: not a client's message
    // Text whose bytes 8-9 happen to have both flag bits set ('no' = 0x6e6f), and a message whose length field
    // is not its size: neither is sockperf's.
    await c.send('garbage-not-sockperf', svc.udpPort, '127.0.0.1');
    const wrongLength = message(11, 3, 64);
    wrongLength.writeUInt32BE(100, 10);
    await c.send(wrongLength, svc.udpPort, '127.0.0.1');
    await c.send(message(10, 3), svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length >= 2, 5000, 'two answers');
    const st = await waitFor(async () => {
      const s = await svc.status();
      return s.workers[0].handled === 7 ? s : null;
    }, 5000, 'seven datagrams handled');
    expect(st.workers[0].drops.malformed).toBe(4);
    expect(c.replies.length).toBe(2);
    const [a, b] = c.replies as [Buffer, Buffer];
    expect(a.length).toBe(64);
    expect(a.readBigUInt64BE(0)).toBe(7n);
    expect(a.readUInt16BE(8)).toBe(2);
    expect(a.subarray(10).equals(message(7, 3, 64).subarray(10))).toBe(true);
    expect(b.readBigUInt64BE(0)).toBe(10n);
    expect(b.readUInt16BE(8)).toBe(2);
    expect(await svc.metrics()).toMatch(/^flowlb_dropped_packets_total\{reason="malformed"\} 4$/m);
  });
});
