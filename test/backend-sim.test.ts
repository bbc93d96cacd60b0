/**
 * The backend simulator (`flowlb backend`) on real loopback sockets, IPv4 and IPv6: echo with the
 * identity trailer, plain echo, sink, the per-packet CPU cost, the stats file, and the generator counting
 * replies per backend identity.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';

import { backendOptionsFromFlags, runBackendCli } from '../src/commands/backend.js';
import { startBackend } from '../src/gen/backend.js';
import type { BackendHandle } from '../src/gen/backend.js';
import { encodeIdentityTrailer, parseIdentityTrailer, readProbe } from '../src/gen/packet.js';
import { runGenerator } from '../src/gen/run.js';
import { waitFor as poll } from './support/service.js';

const backends: BackendHandle[] = [];
const sockets: dgram.Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.close();
  await Promise.all(backends.splice(0).map((b) => b.close()));
});

async function backend(o: Parameters<typeof startBackend>[0]): Promise<BackendHandle> {
  const b = await startBackend(o);
  backends.push(b);
  return b;
}

async function client(family: 4 | 6): Promise<{ sock: dgram.Socket; replies: Buffer[] }> {
  const sock = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  sockets.push(sock);
  const replies: Buffer[] = [];
  sock.on('message', (m) => replies.push(m));
  await new Promise<void>((r) => sock.bind(0, family === 6 ? '::1' : '127.0.0.1', r));
  return { sock, replies };
}

/** Polls `cond` every 5 ms until it holds or `timeoutMs` passes (then fails with `what`). */
const waitFor = (cond: () => boolean, what: string, timeoutMs = 5000): Promise<true> => poll(cond, timeoutMs, what, 5);

describe('echo backend', () => {
  it.each([
    [4, '127.0.0.1'],
    [6, '::1'],
  ] as const)('IPv%i: replies with the request plus the identity trailer', async (family, host) => {
    const b = await backend({ listen: family === 6 ? '[::1]:0' : '127.0.0.1:0', id: `b-v${family}` });
    expect(b.family).toBe(family);
    expect(b.address).toBe(host);
    const { sock, replies } = await client(family);
    sock.send(Buffer.from('hello'), b.port, host);
    await waitFor(() => replies.length === 1, 'the reply');
    const reply = replies[0]!;
    expect(reply.subarray(0, 5).toString()).toBe('hello');
    expect(reply.equals(Buffer.concat([Buffer.from('hello'), encodeIdentityTrailer(`b-v${family}`)]))).toBe(true);
    expect(parseIdentityTrailer(reply)).toBe(`b-v${family}`);
    expect(b.stats()).toMatchObject({ received: 1, sent: 1, bytesReceived: 5, errors: 0, mode: 'echo' });
  });

  it('--no-identity is a plain echo', async () => {
    const b = await backend({ listen: '127.0.0.1:0', identity: false });
    const { sock, replies } = await client(4);
    sock.send(Buffer.from('plain'), b.port, '127.0.0.1');
    await waitFor(() => replies.length === 1, 'the reply');
    expect(replies[0]!.toString()).toBe('plain');
  });

  it('keeps the probe header at offset 0, so the generator measures through it and counts the identity', async () => {
    const b = await backend({ listen: '127.0.0.1:0', id: 'b1' });
    const r = await runGenerator({ target: `127.0.0.1:${b.port}`, flows: 8, count: 80, ratePps: 2000 });
    expect(r).toMatchObject({ sent: 80, received: 80, lost: 0, invalid: 0, backends: { b1: 80 }, flowsOnSeveralBackends: 0 });
    expect(b.stats()).toMatchObject({ received: 80, sent: 80 });
  });

  it('rejects a bad identity and mode', async () => {
    await expect(startBackend({ listen: '127.0.0.1:0', id: '' })).rejects.toMatchObject({ code: 'ERR_GEN_OPTION' });
    await expect(startBackend({ listen: '127.0.0.1:0', id: 'x'.repeat(65) })).rejects.toMatchObject({ code: 'ERR_GEN_OPTION' });
    await expect(startBackend({ listen: '127.0.0.1:0', mode: 'mirror' as 'echo' })).rejects.toMatchObject({ code: 'ERR_GEN_OPTION' });
    // A bad --sockbuf printed Node's RangeError with its stack ("internal error").
    for (const sockbuf of [-1, 1.5, 1e12]) {
      expect(() => backendOptionsFromFlags({ listen: '127.0.0.1:0', sockbuf })).toThrow(/^--sockbuf must be an integer in \[1024, 1073741824\] bytes/);
    }
    expect(backendOptionsFromFlags({ listen: '127.0.0.1:0', sockbuf: 65536 }).socketBufferBytes).toBe(65536);
  });
});

describe('generator counts backends per flow', () => {
  // Stand-ins for a balancer: one keeps each flow on one backend, one spreads every flow's packets.
  async function tagger(pick: (flowId: number, seq: number) => string): Promise<string> {
    const sock = dgram.createSocket('udp4');
    sockets.push(sock);
    sock.on('message', (msg, rinfo) => {
      const p = readProbe(msg)!;
      sock.send(Buffer.concat([msg, encodeIdentityTrailer(pick(p.flowId, p.seq))]), rinfo.port, rinfo.address);
    });
    await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
    return `127.0.0.1:${sock.address().port}`;
  }

  it('flow-affine replies: no flow on several backends', async () => {
    const target = await tagger((flow) => `b${flow % 2}`);
    const r = await runGenerator({ target, flows: 6, count: 60, ratePps: 2000 });
    expect(r.backends).toEqual({ b0: 30, b1: 30 });
    expect(r.flowsOnSeveralBackends).toBe(0);
  });

  it('per-packet spreading: every flow on several backends', async () => {
    const target = await tagger((_flow, seq) => `b${seq % 2}`);
    const r = await runGenerator({ target, flows: 6, count: 60, ratePps: 2000 });
    expect(r.backends).toEqual({ b0: 30, b1: 30 });
    expect(r.flowsOnSeveralBackends).toBe(6);
  });
});

describe('sink backend', () => {
  it.each([4, 6] as const)('IPv%i: counts and never replies', async (family) => {
    const host = family === 6 ? '::1' : '127.0.0.1';
    const b = await backend({ listen: family === 6 ? '[::1]:0' : '127.0.0.1:0', mode: 'sink' });
    const { sock, replies } = await client(family);
    for (let i = 0; i < 100; i++) sock.send(Buffer.alloc(32, i), b.port, host);
    await waitFor(() => b.stats().received === 100, '100 packets at the sink');
    expect(b.stats()).toMatchObject({ received: 100, sent: 0, bytesReceived: 3200 });
    // An echo would have answered by now (the sink saw every packet); nothing came back.
    expect(replies).toHaveLength(0);
  });
});

describe('per-packet cost', () => {
  it('burns costUs of CPU per packet', async () => {
    const b = await backend({ listen: '127.0.0.1:0', mode: 'sink', costUs: 2000 });
    const { sock } = await client(4);
    const t0 = performance.now();
    for (let i = 0; i < 20; i++) sock.send(Buffer.alloc(32), b.port, '127.0.0.1');
    await waitFor(() => b.stats().received === 20, '20 packets');
    const s = b.stats();
    // The cost is a busy loop on the clock (wall time), so busyUs is at least the nominal 40 ms. The CPU
    // it burns can be less when the machine is shared and the loop is descheduled mid-way: half the
    // nominal is the documented floor here, and 10x catches a unit mistake without flaking.
    expect(s.busyUs).toBeGreaterThanOrEqual(20 * 2000);
    expect(s.busyUs).toBeLessThan(20 * 2000 * 10);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(40);
    expect(s.processCpuUs).toBeGreaterThanOrEqual(20 * 2000 * 0.5);
  });
});

describe('stats file and CLI', () => {
  it('writes the stats file periodically and at close', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-backend-'));
    const file = path.join(dir, 'stats.json');
    try {
      const b = await startBackend({ listen: '127.0.0.1:0', id: 'sf', statsFile: file, statsIntervalMs: 20 });
      const { sock, replies } = await client(4);
      for (let i = 0; i < 5; i++) sock.send(Buffer.from(`p${i}`), b.port, '127.0.0.1');
      await waitFor(() => replies.length === 5, '5 replies');
      await waitFor(() => fs.existsSync(file) && JSON.parse(fs.readFileSync(file, 'utf8')).received === 5, 'a periodic write');
      for (let i = 0; i < 3; i++) sock.send(Buffer.from('more'), b.port, '127.0.0.1');
      await waitFor(() => replies.length === 8, '8 replies');
      const final = await b.close();
      expect(final).toMatchObject({ id: 'sf', received: 8, sent: 8 });
      expect(JSON.parse(fs.readFileSync(file, 'utf8'))).toMatchObject({ id: 'sf', received: 8, sent: 8 });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('runBackendCli stops by itself after --duration and prints its counts', async () => {
    const lines: string[] = [];
    const stats = await runBackendCli({ listen: '127.0.0.1:0', mode: 'sink', id: 'cli', duration: 0.2 }, (l) => lines.push(l));
    expect(stats).toMatchObject({ id: 'cli', received: 0 });
    expect(lines[0]).toMatch(/^backend cli listening on 127\.0\.0\.1:\d+ \(sink, cost 0 us\)$/);
    expect(lines[1]).toMatch(/received 0, sent 0.*stopped by duration/);
  });
});
