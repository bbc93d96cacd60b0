/** `/where` and `flowlb where` predict the worker (and proxy backend) that really serves a flow. */
import { execFileSync, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { CLI, Client, FIXTURES, startFlowlb, waitFor, type Running } from './support/service.js';

let running: Running | null = null;
let closers: (() => void)[] = [];
afterEach(async () => { for (const c of closers) c(); closers = []; await running?.stop('SIGKILL'); });

/** A client of `family` sends one datagram to `port`; returns it and the worker the seq handler says served it. */
async function served(family: 4 | 6, port: number): Promise<{ c: Client; worker: number }> {
  const host = family === 4 ? '127.0.0.1' : '::1';
  const c = await new Client(family).bind(host);
  closers.push(() => c.close());
  await c.send('1', port, host);
  await waitFor(() => c.replies.length === 1, 5000, 'reply');
  return { c, worker: Number(c.replies[0]!.toString().split(' ')[0]) };
}

describe('where', () => {
  it('names the worker that serves each flow', async () => {
    running = await startFlowlb(['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '3', '--no-balance', '--log-level', 'warn',
      '--handler', path.join(FIXTURES, 'seq-handler.js')]);
    for (let i = 0; i < 12; i++) {
      const { c, worker } = await served(4, running.udpPort);
      const w = await (await fetch(`http://127.0.0.1:${running.httpPort}/where?src=127.0.0.1:${c.port}`)).json();
      expect(w.worker).toBe(worker);
      const cli = JSON.parse(execFileSync(process.execPath, [CLI, 'where', '--src', `127.0.0.1:${c.port}`, '--url', `http://127.0.0.1:${running.httpPort}`], { encoding: 'utf8' }));
      expect(cli.bucket).toBe(w.bucket);
    }
  });

  it('takes the listener of the client\'s address family as the default destination', async () => {
    // With an IPv6 listener first, an IPv4 client's flow was answered with 400 "not an IPv4 address: ::1".
    running = await startFlowlb(['--listen', '[::1]:0', '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '3',
      '--no-balance', '--log-level', 'warn', '--handler', path.join(FIXTURES, 'seq-handler.js')]);
    const v4 = (await running.status()).udp.find((u: { family: number }) => u.family === 4).port as number;
    for (const family of [4, 6] as const) {
      for (let i = 0; i < 6; i++) {
        const { c, worker } = await served(family, family === 4 ? v4 : running.udpPort);
        const src = family === 4 ? `127.0.0.1:${c.port}` : `[::1]:${c.port}`;
        const res = await fetch(`http://127.0.0.1:${running.httpPort}/where?src=${encodeURIComponent(src)}`);
        expect(res.status, await res.clone().text()).toBe(200);
        expect((await res.json()).worker).toBe(worker);
      }
    }
  });

  it('maps dst to the listener that receives it (a wildcard one too) and rejects a dst flowlb does not listen on', async () => {
    running = await startFlowlb(['--listen', '[::]:0', '--http', '127.0.0.1:0', '--workers', '3', '--no-balance', '--log-level', 'warn',
      '--handler', path.join(FIXTURES, 'seq-handler.js')]);
    for (let i = 0; i < 8; i++) {
      const { c, worker } = await served(6, running.udpPort);
      // The address the client sent to: it used to be hashed as typed, not as the wildcard listener the
      // dispatcher hashes (5 of 12 answers named the wrong worker).
      const q = `src=${encodeURIComponent(`[::1]:${c.port}`)}&dst=${encodeURIComponent(`[0:0::1]:${running.udpPort}`)}`;
      const res = await fetch(`http://127.0.0.1:${running.httpPort}/where?${q}`);
      expect(res.status, await res.clone().text()).toBe(200);
      expect((await res.json()).worker).toBe(worker);
    }
    const bad = await fetch(`http://127.0.0.1:${running.httpPort}/where?src=${encodeURIComponent('[::1]:5')}&dst=${encodeURIComponent(`[::1]:${running.udpPort + 1}`)}`);
    expect(bad.status).toBe(400);
    expect(await bad.text()).toMatch(/is not an address flowlb listens on/);
  });

  it('names the proxy backend a flow uses, offline as well', async () => {
    const backends = await Promise.all(['A', 'B', 'C'].map(async (id) => {
      const s = dgram.createSocket('udp4');
      s.on('message', (m, r) => s.send(id, r.port, r.address));
      await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
      closers.push(() => s.close());
      return { id, port: s.address().port };
    }));
    const specs = backends.map((b, i) => `127.0.0.1:${b.port}@${i + 1}`);
    running = await startFlowlb(['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--handler', 'proxy', '--log-level', 'warn',
      ...specs.flatMap((s) => ['--backend', s])]);
    for (let i = 0; i < 10; i++) {
      const c = await new Client(4).bind('127.0.0.1');
      closers.push(() => c.close());
      await c.send('x', running.udpPort, '127.0.0.1');
      await waitFor(() => c.replies.length === 1, 5000, 'reply');
      const id = c.replies[0]!.toString();
      const expected = `127.0.0.1:${backends.find((b) => b.id === id)!.port}`;
      const offline = JSON.parse(execFileSync(process.execPath, [CLI, 'where', '--src', `127.0.0.1:${c.port}`, '--dst', `127.0.0.1:${running.udpPort}`,
        ...specs.flatMap((s) => ['--backend', s])], { encoding: 'utf8' }));
      expect(offline.backend).toBe(expected);
    }
  });

  it('rejects ports beyond 65535, too many buckets and an IPv6 source without --dst, with one line and exit 2', () => {
    const run = (...args: string[]): { code: number | null; err: string } => {
      const r = spawnSync(process.execPath, [CLI, 'where', ...args], { encoding: 'utf8' });
      return { code: r.status, err: r.stderr };
    };
    // They used to wrap silently (70000 answered as 4464).
    for (const [args, message] of [
      [['--src', '127.0.0.1:70000'], 'port must be an integer between 0 and 65535, got 70000'],
      [['--src', '127.0.0.1:5000', '--dst', '127.0.0.1:65536'], 'got 65536'],
      [['--src', '127.0.0.1:5000', '--buckets', '131072'], '--buckets must be a power of two <= 65536, got 131072'],
      [['--src', '127.0.0.1:5000', '--buckets', '1.5'], '--buckets must be a power of two <= 65536, got 1.5'],
      [['--src', '[::1]:5000'], '--src [::1]:5000 is IPv6 and --dst defaults to 127.0.0.1:5300 (IPv4)'],
    ] as const) {
      const r = run(...args);
      expect(r.code, args.join(' ')).toBe(2);
      expect(r.err.trim().split('\n')).toEqual([expect.stringContaining(message)]);
    }
    expect(JSON.parse(execFileSync(process.execPath, [CLI, 'where', '--src', '[::1]:5000', '--dst', '[::1]:5300'], { encoding: 'utf8' })).bucket).toBeTypeOf('number');
  });

  it('rejects an IPv4 octet with leading zeros in --src, --dst and GET /where like any malformed address; IPv6 forms still answer', async () => {
    // 01.2.3.4 was answered as 1.2.3.4 (the hash reads octets as decimal), though net.isIP and every other address
    // flag refuse it and no packet carries it.
    const run = (...args: string[]): { code: number | null; out: string; err: string } => {
      const r = spawnSync(process.execPath, [CLI, 'where', ...args], { encoding: 'utf8' });
      return { code: r.status, out: r.stdout, err: r.stderr };
    };
    const notIPv4 = (flag: string, text: string): string =>
      `flowlb: ${flag} host must be an IPv4 address, [IPv6 address] or localhost (names are not resolved), got "${text}"`;
    for (const [args, line] of [
      [['--src', '01.2.3.4:5'], notIPv4('--src', '01.2.3.4:5')],
      [['--src', '1.2.3.004:5'], notIPv4('--src', '1.2.3.004:5')],
      [['--src', '1.2.3.4:5', '--dst', '127.0.0.01:5300'], notIPv4('--dst', '127.0.0.01:5300')],
      [['--src', '[::ffff:01.2.3.4]:5', '--dst', '[::1]:5300'], 'flowlb: --src has an invalid IPv6 address "::ffff:01.2.3.4" in "[::ffff:01.2.3.4]:5"'],
      [['--src', '1.2.3.4:5', '--dst', '[::1]:5300'], 'flowlb: --src 1.2.3.4:5 is IPv4 and --dst [::1]:5300 is IPv6: a flow has one address family'],
    ] as const) {
      const r = run(...args);
      expect({ args, code: r.code, err: r.err, out: r.out }).toEqual({ args, code: 2, err: `${line}\n`, out: '' });
    }
    const answer = (...args: string[]): { bucket: number; hash: number } => {
      const r = run(...args);
      expect(r.code, r.err).toBe(0);
      return JSON.parse(r.out);
    };
    expect(answer('--src', '[::1]:5060', '--dst', '[::1]:5300').hash).toBe(answer('--src', '[0:0::1]:5060', '--dst', '[0::1]:5300').hash);
    // The answer shows the addresses in their one spelling, not as typed.
    expect(answer('--src', '[0:0::1]:5060', '--dst', '[0::1]:5300')).toMatchObject({ src: '[::1]:5060', dst: '[::1]:5300' });
    expect(answer('--src', 'localhost:5', '--dst', 'localhost:5300')).toMatchObject({ src: '127.0.0.1:5', dst: '127.0.0.1:5300' });
    expect(answer('--src', '[::ffff:1.2.3.4]:5', '--dst', '[::1]:5300').bucket).toBeTypeOf('number');
    expect(answer('--src', '1.2.3.4:5').hash).toBe(answer('--src', '1.2.3.4:5', '--dst', '127.0.0.1:5300').hash);

    running = await startFlowlb(['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn']);
    const base = `http://127.0.0.1:${running.httpPort}`;
    const get = async (q: string): Promise<{ status: number; text: string }> => {
      const res = await fetch(`${base}/where?${q}`);
      return { status: res.status, text: await res.text() };
    };
    expect(await get('src=01.2.3.4:5')).toEqual({ status: 400, text: 'src host must be an IPv4 address, [IPv6 address] or localhost (names are not resolved), got "01.2.3.4:5"\n' });
    expect(await get(`src=1.2.3.4:5&dst=127.0.0.01:${running.udpPort}`)).toEqual({
      status: 400, text: `dst host must be an IPv4 address, [IPv6 address] or localhost (names are not resolved), got "127.0.0.01:${running.udpPort}"\n`,
    });
    expect((await get(`src=1.2.3.4:5&dst=127.0.0.1:${running.udpPort}`)).status).toBe(200);
    const viaUrl = run('--src', '01.2.3.4:5', '--url', base);
    expect({ code: viaUrl.code, err: viaUrl.err }).toEqual({ code: 2, err: `${notIPv4('--src', '01.2.3.4:5')}\n` });
  });
});
