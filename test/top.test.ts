/**
 * `flowlb top`: the view as a pure function of two /status documents and a width, and the real command in a
 * real terminal (tmux): it shows a row per worker, marks a lost service as DISCONNECTED, quits on q and Ctrl-C
 * giving the terminal back, and fails with one line when the URL cannot be reached. Needs `npx tsc -p .` and
 * tmux (`apt-get install -y tmux`); without tmux the test fails, it is not skipped.
 */
import { spawn, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync } from 'node:fs';
import net from 'node:net';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';

import { statusUrl } from '../src/commands/top.js';
import { bar, formatCount, parseStatus, renderTop, type TopSample, type TopStatus, type TopWorker } from '../src/metrics/top-view.js';
import { CLI, LOOPBACK, startFlowlb } from './support/service.js';


// ---- the view ----

function worker(id: number, over: Partial<TopWorker> = {}): TopWorker {
  return {
    id, pid: 1000 + id, ready: true, restarts: 0, cpuUtil: 0.5, elu: 0.4, schedWaitLast: 0.02, targetShare: 0.5, buckets: 512, queueDepth: 3,
    pps: 100, dispatchedPackets: 10_000, flowsActive: 20, drops: {}, rssBytes: 64 * 1024 * 1024, ...over,
  };
}

function status(over: Partial<TopStatus> = {}): TopStatus {
  return {
    healthy: true, pid: 999, handler: 'echo', mode: 'flow', balancer: 'adaptive', buckets: 1024, epoch: 5, imbalance: 0.031,
    rounds: 12, received: 20_000, dropped: {}, droppedTotal: null, migrations: { completed: 10, timeouts: 0, aborted: 0, inFlight: 0 },
    workers: [worker(0), worker(1)], ...over,
  };
}

const at = (s: TopStatus, atMs: number): TopSample => ({ status: s, atMs });
const opts = { url: 'http://127.0.0.1:9464' };

function rowOf(lines: string[], id: number): string {
  const row = lines.find((l) => new RegExp(`^\\s+${id} `).test(l));
  if (!row) throw new Error(`no row for worker ${id} in\n${lines.join('\n')}`);
  return row;
}

describe('top view', () => {
  it('draws one row per worker with bar, share, pps, drops and queue, from two samples', () => {
    const before = status({ workers: [worker(0, { dispatchedPackets: 1000 }), worker(1, { dispatchedPackets: 5000, drops: { queue_full: 10 } })] });
    const now = status({
      received: 30_000, dropped: { channel_full: 4 },
      migrations: { completed: 14, timeouts: 1, aborted: 0, inFlight: 2 },
      workers: [
        worker(0, { dispatchedPackets: 3000, cpuUtil: 1, buckets: 256, queueDepth: 42 }),
        worker(1, { dispatchedPackets: 6000, cpuUtil: 0, buckets: 768, drops: { queue_full: 30 } }),
      ],
    });
    const lines = renderTop(at(now, 3000), at(before, 1000), 120, opts);
    for (const l of lines) expect(l.length).toBeLessThanOrEqual(120);
    const header = lines.join('\n');
    expect(header).toContain('rx 5000 pps');
    expect(header).toContain('workers 2/2 up');
    expect(header).toContain('migrations 2.5/s');
    expect(header).toContain('in flight 2');
    expect(header).toContain('imbalance 0.031');
    expect(header).toContain('drops 12/s'); // (4 + 30 - 10) / 2 s
    const r0 = rowOf(lines, 0), r1 = rowOf(lines, 1);
    expect(r0).toMatch(/\[#+\]/); // full bar at cpuUtil 1
    expect(r1).toMatch(/\[\.+\]/); // empty bar at 0
    expect(r0).toContain('25.0%'); // 256 of 1024 buckets
    expect(r1).toContain('75.0%');
    expect(r0).toMatch(/\s1000\s/); // (3000 - 1000) / 2 s
    expect(r1).toMatch(/\s500\s/);
    expect(r1).toMatch(/\s10\s/); // drops/s of worker 1
    expect(r0).toMatch(/\s42\s/); // queue depth
  });

  it('takes the header\'s drop total from the cluster total, which a replaced worker does not reset', () => {
    // A worker with 8,430 drops was killed: its replacement's own drops are 0, and the header said "0 total".
    const before = status({ droppedTotal: { flow_queue_full: 8430 }, workers: [worker(0, { drops: { flow_queue_full: 8430 } }), worker(1)] });
    const after = status({ droppedTotal: { flow_queue_full: 8430, channel_full: 2 }, dropped: { channel_full: 2 }, workers: [worker(0, { restarts: 1 }), worker(1)] });
    const header = renderTop(at(after, 2000), at(before, 1000), 120, opts).join('\n');
    expect(header).toContain('(8432 total)');
    expect(header).toContain('drops 2/s');
    expect(parseStatus({ ...status(), droppedTotal: { oversize: 3 } })!.droppedTotal).toEqual({ oversize: 3 });
  });

  it('shows each worker\'s wait for a CPU, and a dash where the kernel does not say', () => {
    const lines = renderTop(at(status({ workers: [worker(0, { schedWaitLast: 0.42 }), worker(1, { schedWaitLast: -1 })] }), 0), null, 120, opts);
    const header = lines.find((l) => l.includes('ELU'))!;
    const col = header.indexOf('WAIT');
    expect(col).toBeGreaterThan(header.indexOf('ELU'));
    // Right-aligned under its header.
    expect(rowOf(lines, 0).slice(col - 1, col + 4).trim()).toBe('42%');
    expect(rowOf(lines, 1).slice(col - 1, col + 4).trim()).toBe('-');
    expect(parseStatus({ ...status(), workers: [{ id: 0, ready: true }] })!.workers[0]!.schedWaitLast).toBe(-1);
  });

  it('falls back to the balancer\'s pps without a previous sample and marks down workers', () => {
    const lines = renderTop(at(status({ workers: [worker(0, { pps: 777 }), worker(1, { ready: false, restarts: 3 })] }), 0), null, 120, opts);
    expect(rowOf(lines, 0)).toContain('777');
    expect(rowOf(lines, 1)).toContain('down (restarts 3)');
    expect(lines.join('\n')).toContain('workers 1/2 up');
  });

  it('fits any width: the bar shrinks, lines are cut, never wider than the terminal', () => {
    const wide = renderTop(at(status(), 0), null, 200, opts);
    const narrow = renderTop(at(status(), 0), null, 60, opts);
    const tiny = renderTop(at(status(), 0), null, 10, opts);
    for (const l of wide) expect(l.length).toBeLessThanOrEqual(200);
    for (const l of narrow) expect(l.length).toBeLessThanOrEqual(60);
    for (const l of tiny) expect(l.length).toBeLessThanOrEqual(40); // narrowest layout drawn
    expect(rowOf(wide, 0).match(/\[[#.]+\]/)![0].length).toBeGreaterThan(rowOf(narrow, 0).match(/\[[#.]+\]/)![0].length);
  });

  it('shows DISCONNECTED with the error and the age of the data', () => {
    const lines = renderTop(at(status(), 1000), null, 100, { ...opts, disconnected: { error: 'connection refused', sinceMs: 2000 }, nowMs: 6000 });
    expect(lines[1]).toBe('DISCONNECTED: connection refused (retrying; last update 5s ago)');
    expect(rowOf(lines, 0)).toBeTruthy();
  });

  it('treats a restarted worker\'s smaller counters as no drops, not negative ones', () => {
    const before = status({ workers: [worker(0, { drops: { queue_full: 50 } }), worker(1)] });
    const now = status({ workers: [worker(0, { pid: 5555, drops: { queue_full: 1 } }), worker(1)] });
    expect(rowOf(renderTop(at(now, 1000), at(before, 0), 120, opts), 0)).not.toContain('-');
  });

  it('parses /status and rejects other JSON', () => {
    expect(parseStatus({ hello: 1 })).toBeNull();
    expect(parseStatus([])).toBeNull();
    const s = parseStatus({ ...status(), extra: true, workers: [{ id: 0, ready: true, cpuUtil: 'x' }] })!;
    expect(s.workers[0]!.cpuUtil).toBe(0);
    expect(s.workers[0]!.drops).toEqual({});
  });

  it('formats counts and bars', () => {
    expect(formatCount(999)).toBe('999');
    expect(formatCount(12_345)).toBe('12.3k');
    expect(formatCount(1_234_567)).toBe('1.23M');
    expect(bar(0.5, 12)).toBe('[#####.....]');
    expect(bar(3, 6)).toBe('[####]');
    expect(bar(Number.NaN, 6)).toBe('[....]');
  });

  it('accepts host:port, a base URL or the /status URL', () => {
    expect(statusUrl('127.0.0.1:9464').href).toBe('http://127.0.0.1:9464/status');
    expect(statusUrl('http://127.0.0.1:9464/').href).toBe('http://127.0.0.1:9464/status');
    expect(statusUrl('http://[::1]:9/status').href).toBe('http://[::1]:9/status');
    expect(() => statusUrl('ftp://x')).toThrow(/--url/);
  });
});

// ---- the command in a real terminal ----

async function waitFor<T>(what: string, deadlineMs: number, probe: () => T | undefined | null | false | Promise<T | undefined | null | false>, detail?: () => string): Promise<T> {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined && v !== null && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}${detail ? `\n${detail()}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A tmux server of our own (-L), so nothing of the user's tmux is touched. */
const TMUX_SOCKET = `flowlb-top-test-${process.pid}`;
const SESSION = 'top';

function tmux(...args: string[]): { code: number | null; out: string } {
  const r = spawnSync('tmux', ['-L', TMUX_SOCKET, ...args], { encoding: 'utf8', timeout: 10_000 });
  return { code: r.status, out: (r.stdout ?? '') + (r.stderr ?? '') };
}

function capture(): string {
  return tmux('capture-pane', '-p', '-t', SESSION).out;
}

/** Runs `flowlb top` in a 120x30 tmux pane; the shell prints its exit code after it and waits, so we can read it. */
function startTopInTmux(url: string): void {
  const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(CLI)} top --url ${url}; echo "top exited with $?"; sleep 120`;
  const r = tmux('new-session', '-d', '-s', SESSION, '-x', '120', '-y', '30', cmd);
  if (r.code !== 0) throw new Error(`tmux new-session failed: ${r.out}`);
}

/** Waits for the shell in the pane to report top's exit, and returns the screen then. */
function topExited(): Promise<string> {
  return waitFor('top to exit', 10_000, () => {
    const s = capture();
    return s.includes('top exited with') ? s : null;
  }, capture);
}

describe('flowlb top in a terminal', () => {
  const cleanups: (() => Promise<unknown> | void)[] = [];

  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p .)`);
    const probe = spawnSync('tmux', ['-V'], { encoding: 'utf8' });
    if (probe.error || probe.status !== 0) {
      throw new Error('tmux is required for the flowlb top terminal test and was not found: apt-get install -y tmux');
    }
  });
  afterEach(async () => {
    tmux('kill-server');
    while (cleanups.length > 0) await cleanups.pop()!();
  });
  afterAll(() => { tmux('kill-server'); });

  it('shows a row per worker, marks a lost service DISCONNECTED, quits on q and restores the terminal', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--workers', '2']);
    cleanups.push(svc.stop);
    // Some traffic so the rows have numbers.
    const client = dgram.createSocket('udp4');
    await new Promise<void>((r) => client.bind(0, '127.0.0.1', () => r()));
    const timer = setInterval(() => { for (let i = 0; i < 5; i++) client.send('top test', svc.udpPort, '127.0.0.1'); }, 50);
    cleanups.push(() => { clearInterval(timer); client.close(); });

    startTopInTmux(svc.httpUrl);
    const screen = await waitFor('worker rows on screen', 15_000, () => {
      const s = capture();
      return /^\s+0 \s*\d+\s+\[/m.test(s) && /^\s+1 \s*\d+\s+\[/m.test(s) && s.includes('workers 2/2 up') ? s : null;
    }, capture);
    expect(screen).toContain('flowlb top');
    expect(screen).toMatch(/W\s+PID\s+LOAD/);
    expect(screen).toContain('migrations');
    expect(screen).toContain('imbalance');

    // The service goes away: the view stays, marked, and top keeps running.
    await svc.stop();
    await waitFor('the DISCONNECTED marker', 10_000, () => capture().includes('DISCONNECTED'), capture);
    expect(capture()).toMatch(/^\s+0 \s*\d+\s+\[/m);

    tmux('send-keys', '-t', SESSION, 'q');
    const after = await topExited();
    expect(after).toContain('top exited with 0');
    // Back on the normal screen: the view (drawn on the alternate screen) is gone.
    expect(after).not.toContain('DISCONNECTED');
    expect(after).not.toMatch(/W\s+PID\s+LOAD/);
  });

  it('quits on Ctrl-C with exit code 0', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--workers', '1']);
    cleanups.push(svc.stop);
    startTopInTmux(svc.httpUrl);
    await waitFor('the worker row', 15_000, () => /^\s+0 \s*\d+\s+\[/m.test(capture()), capture);
    tmux('send-keys', '-t', SESSION, 'C-c');
    const after = await topExited();
    expect(after).toContain('top exited with 0');
  });

  it('prints one view and exits with --once (for pipes and scripts)', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--workers', '1']);
    cleanups.push(svc.stop);
    const out = await new Promise<{ code: number | null; stdout: string }>((resolve) => {
      const p = spawn(process.execPath, [CLI, 'top', '--once', '--interval', '200ms', '--url', svc.httpUrl], { stdio: ['ignore', 'pipe', 'inherit'] });
      let stdout = '';
      p.stdout!.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
      p.once('exit', (code) => resolve({ code, stdout }));
    });
    expect(out.code).toBe(0);
    expect(out.stdout).toMatch(/^flowlb top /);
    expect(out.stdout).toMatch(/^\s+0 \s*\d+\s+\[/m);
    expect(out.stdout).not.toContain('\x1b');
  });

  it('fails with one line and exit 1 when the service cannot be reached at start', async () => {
    // A port nothing listens on: bind one, then close it.
    const server = net.createServer();
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    const port = (server.address() as net.AddressInfo).port;
    await new Promise<void>((r) => server.close(() => r()));
    const r = spawnSync(process.execPath, [CLI, 'top', '--url', `http://127.0.0.1:${port}`], { encoding: 'utf8', timeout: 10_000 });
    expect(r.status).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toBe(`flowlb: cannot reach flowlb at http://127.0.0.1:${port}/status: connection refused\n`);
  });
});
