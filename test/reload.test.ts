/**
 * SIGHUP reload under traffic: weights change and a backend is added without touching established flows; a bad
 * file is rejected and the running config stays.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import path from 'node:path';
import { Client, configFile, FIXTURES, removeConfigFiles, startFlowlb, waitFor, type Running } from './support/service.js';

let cleanups: (() => void)[] = [];
let running: Running[] = [];
afterEach(async () => {
  for (const c of cleanups) c();
  cleanups = [];
  removeConfigFiles();
  await Promise.all(running.map((r) => r.stop('SIGKILL')));
  running = [];
});

async function idBackend(id: string): Promise<{ port: number; flows: Set<string> }> {
  const s = dgram.createSocket('udp4');
  const flows = new Set<string>();
  s.on('message', (m, r) => { flows.add(m.toString().split(' ')[0]!); s.send(`${id} ${m}`, r.port, r.address); });
  await new Promise<void>((res) => s.bind(0, '127.0.0.1', () => res()));
  cleanups.push(() => s.close());
  return { port: s.address().port, flows };
}

describe('reload (SIGHUP)', () => {
  it('adds a backend and changes weights without disturbing established flows; rejects a bad file', async () => {
    const a = await idBackend('A');
    const b = await idBackend('B');
    const file = configFile({ handler: 'proxy', backends: [`127.0.0.1:${a.port}@1`], idleTimeout: '30s' });
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn']);
    running.push(svc);

    const old: Client[] = [];
    for (let i = 0; i < 40; i++) { const c = await new Client(4).bind('127.0.0.1'); old.push(c); cleanups.push(() => c.close()); }
    let seq = 0;
    const round = async (cs: Client[], tag: string): Promise<void> => {
      seq++;
      await Promise.all(cs.map((c, i) => c.send(`${tag}${i} ${seq}`, svc.udpPort, '127.0.0.1')));
    };
    for (let k = 0; k < 5; k++) await round(old, 'o');
    await waitFor(() => old.every((c) => c.replies.length === 5), 5000, 'replies before reload');

    // Reload: A's weight up, B added. Traffic continues across the signal.
    fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${a.port}@2`, `127.0.0.1:${b.port}@2`], idleTimeout: '30s' }));
    svc.proc.kill('SIGHUP');
    for (let k = 0; k < 5; k++) { await round(old, 'o'); await new Promise((r) => setTimeout(r, 20)); }
    await waitFor(async () => (await svc.status()).reloads.ok === 1, 5000, 'reload applied');
    await waitFor(() => old.every((c) => c.replies.length === 10), 5000, 'every reply across the reload');
    // Established flows stayed on A.
    for (const c of old) expect(new Set(c.replies.map((r) => r.toString().split(' ')[0]))).toEqual(new Set(['A']));

    // New flows now spread over A and B.
    const fresh: Client[] = [];
    for (let i = 0; i < 60; i++) { const c = await new Client(4).bind('127.0.0.1'); fresh.push(c); cleanups.push(() => c.close()); }
    await round(fresh, 'n');
    await waitFor(() => fresh.every((c) => c.replies.length === 1), 5000, 'new flows answered');
    const onB = fresh.filter((c) => c.replies[0]!.toString().startsWith('B ')).length;
    expect(onB).toBeGreaterThan(10);
    expect(onB).toBeLessThan(50);

    // A bad file is rejected; the running config stays and traffic continues.
    fs.writeFileSync(file, '{"handler": "proxy", "backends": ["not-an-address"]}');
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.rejected === 1, 5000, 'bad reload rejected');
    await round(old, 'o');
    await waitFor(() => old.every((c) => c.replies.length === 11), 5000, 'traffic after the rejected reload');
    const st = await svc.status();
    expect(st.backends).toHaveLength(2);
    expect(svc.stderr()).toMatch(/config reload rejected/);
    // Prometheus sees it too (it saw nothing: /status and the log only).
    const text = await svc.metrics();
    expect(text).toMatch(/^flowlb_config_last_reload_successful 0$/m);
    expect(text).toMatch(/^flowlb_config_reloads_total\{outcome="rejected"\} 1$/m);
    expect(text).toMatch(/^flowlb_config_reloads_total\{outcome="ok"\} 1$/m);

    // So is a file whose handler options the handler refuses (checked as at start, before any worker sees them).
    fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${a.port}`], handlerOptions: { maxFails: -1 } }));
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.rejected === 2, 5000, 'reload with bad handler options rejected');
    expect(svc.stderr()).toMatch(/config reload rejected.*handlerOptions\.maxFails must be an integer/);
    expect((await svc.status()).backends).toHaveLength(2);
    // A good file again: the gauge is back to 1.
    fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${a.port}@2`, `127.0.0.1:${b.port}@2`], idleTimeout: '30s' }));
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.ok === 2, 5000, 'good reload applied');
    expect(await svc.metrics()).toMatch(/^flowlb_config_last_reload_successful 1$/m);
    expect(await svc.metrics()).toMatch(/^flowlb_config_restart_needed_settings 0$/m);
    // A file that changes a restart-only setting: applied (ok), but the service runs another value than its file,
    // and says so (it was an "ok" reload and a log line only).
    fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${a.port}@2`, `127.0.0.1:${b.port}@2`], idleTimeout: '30s', buckets: 256 }));
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.ok === 3, 5000, 'reload with a restart-only change applied');
    expect((await svc.status()).reloads.restartNeeded).toEqual(['buckets']);
    expect(await svc.metrics()).toMatch(/^flowlb_config_restart_needed_settings 1$/m);
  });

  it('drops the metric series of a backend the reload removed', async () => {
    const a = await idBackend('A');
    const b = await idBackend('B');
    const file = configFile({ handler: 'proxy', backends: [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`] });
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn']);
    running.push(svc);
    const clients: Client[] = [];
    for (let i = 0; i < 20; i++) { const c = await new Client(4).bind('127.0.0.1'); clients.push(c); cleanups.push(() => c.close()); }
    await Promise.all(clients.map((c, i) => c.send(`c${i} 1`, svc.udpPort, '127.0.0.1')));
    await waitFor(() => clients.every((c) => c.replies.length === 1), 5000, 'answered by A and B');
    expect(b.flows.size).toBeGreaterThan(0);
    const requestsOf = (text: string, port: number): RegExpMatchArray | null => text.match(new RegExp(`^flowlb_backend_requests_total\\{backend="127\\.0\\.0\\.1:${port}"\\} (\\d+)`, 'm'));
    await waitFor(async () => Number(requestsOf(await svc.metrics(), b.port)?.[1] ?? 0) > 0, 5000, "B's requests in /metrics");

    fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${a.port}`] }));
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.ok === 1, 5000, 'reload applied');
    await Promise.all(clients.map((c, i) => c.send(`c${i} 2`, svc.udpPort, '127.0.0.1')));
    await waitFor(() => clients.every((c) => c.replies.length === 2), 5000, 'every flow answered after the reload');
    // Wait for a report carrying the new counters, then B has no series left; A's counted the moved flows.
    await waitFor(async () => Number(requestsOf(await svc.metrics(), a.port)?.[1] ?? 0) === 40 - b.flows.size, 5000, "A's requests after the reload");
    const text = await svc.metrics();
    expect(text).not.toContain(`127.0.0.1:${b.port}`);
    expect(text).toMatch(new RegExp(`^flowlb_backend_up\\{backend="127\\.0\\.0\\.1:${a.port}"\\} 1`, 'm'));
  });

  it('keeps the command-line flags over the file on every reload, not only the first', async () => {
    const a = await idBackend('A');
    const b = await idBackend('B');
    // The file names B; the flag names A and wins (flags override the file).
    const file = configFile({ handler: 'proxy', backends: [`127.0.0.1:${b.port}`], idleTimeout: '30s' });
    const svc = await startFlowlb(['--config', file, '--backend', `127.0.0.1:${a.port}`, '--idle-timeout', '20s',
      '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--log-level', 'warn']);
    running.push(svc);
    const ports = async (): Promise<number[]> => (await svc.status()).backends.map((x: { port: number }) => x.port);
    expect(await ports()).toEqual([a.port]);
    for (let n = 1; n <= 3; n++) {
      fs.writeFileSync(file, JSON.stringify({ handler: 'proxy', backends: [`127.0.0.1:${b.port}`], idleTimeout: `${30 + n}s` }));
      svc.proc.kill('SIGHUP');
      await waitFor(async () => (await svc.status()).reloads.ok === n, 5000, `reload ${n} applied`);
      expect(await ports(), `backends after reload ${n}`).toEqual([a.port]);
    }
    // The flags were the same each time: no reload may claim that listen or http changed.
    expect(svc.stderr()).not.toMatch(/need a restart/);
    const c = await new Client(4).bind('127.0.0.1');
    cleanups.push(() => c.close());
    await c.send('x 1', svc.udpPort, '127.0.0.1');
    await waitFor(() => c.replies.length === 1, 5000, 'reply through the flag backend');
    expect(c.replies[0]!.toString()).toMatch(/^A /);
  });

  it('applies queue settings to running workers, and leaving packet mode ends spilling', async () => {
    const base = { handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs: 2000, slowWorker: 0, slowCostUs: 4000 } };
    const file = configFile({ ...base, balancer: { mode: 'packet', enabled: false, queueLimit: 20 }, queue: { flowQueueLimit: 1024 } });
    const svc = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '2', '--buckets', '64', '--log-level', 'warn']);
    running.push(svc);
    const cs: Client[] = [];
    for (let i = 0; i < 16; i++) { const c = await new Client(4).bind('127.0.0.1'); cs.push(c); cleanups.push(() => c.close()); }
    // Load until a worker spills (packet mode), then reload into flow mode while it does.
    let spilling = false;
    for (let round = 0; round < 200 && !spilling; round++) {
      await Promise.all(cs.map((c) => c.send(`r${round}`, svc.udpPort, '127.0.0.1')));
      await new Promise((r) => setTimeout(r, 5));
      if (round % 10 === 9) spilling = (await svc.metrics()).includes('flowlb_worker_spilling{worker="0"} 1');
    }
    expect(spilling).toBe(true);
    fs.writeFileSync(file, JSON.stringify({ ...base, balancer: { mode: 'flow', enabled: false, queueLimit: 20 }, queue: { flowQueueLimit: 8 } }));
    svc.proc.kill('SIGHUP');
    await waitFor(async () => (await svc.status()).reloads.ok === 1, 5000, 'reload applied');
    // Spilling used to stay on for good after a reload out of packet mode: flow affinity broken.
    expect(await svc.metrics()).not.toMatch(/flowlb_worker_spilling\{worker="\d"\} 1/);
    await waitFor(async () => (await svc.status()).workers.every((w: { queueDepth: number }) => w.queueDepth === 0), 30_000, 'queues empty', 200);
    const spilledBefore = (await svc.status()).spilledPackets;
    // The new per-flow queue limit (8) holds in the running workers: a burst of 60 in one flow overflows it.
    const one = cs[0]!;
    for (let i = 0; i < 60; i++) one.socket.send(`b${i}`, svc.udpPort, '127.0.0.1');
    const st = await waitFor(async () => {
      const s = await svc.status();
      const full = s.workers.reduce((a: number, w: { drops: Record<string, number> }) => a + (w.drops.flow_queue_full ?? 0), 0);
      return full > 0 && s.workers.every((w: { queueDepth: number }) => w.queueDepth === 0) ? { s, full } : null;
    }, 10_000, 'flow_queue_full drops from the new limit', 100);
    expect(st.full).toBeGreaterThanOrEqual(40);
    expect(st.s.spilledPackets).toBe(spilledBefore);
  });
});
