/**
 * Starts a real flowlb (the compiled CLI, as a user runs it) and finds its ports from the "listening" log line.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CLI = path.join(ROOT, 'dist/src/cli.js');
export const FIXTURES = path.join(ROOT, 'test/fixtures');

/** Both listeners on loopback ports of the system's choosing, and only warnings logged: the usual test service. */
export const LOOPBACK = ['--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--log-level', 'warn'];

export interface Running {
  readonly proc: ChildProcess;
  readonly udpPort: number;
  readonly udpHost: string;
  readonly httpPort: number;
  /** `http://127.0.0.1:<httpPort>`, the base of /status and /metrics. */
  readonly httpUrl: string;
  readonly stderr: () => string;
  status(): Promise<any>;
  metrics(): Promise<string>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Every service a test started: killed when the test process exits, however it exits, so none is orphaned. */
const started = new Set<ChildProcess>();
process.on('exit', () => { for (const p of started) try { p.kill('SIGKILL'); } catch { /* gone */ } });

export async function startFlowlb(args: string[], timeoutMs = 20_000): Promise<Running> {
  const proc = spawn(process.execPath, [CLI, 'serve', ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  started.add(proc);
  proc.once('exit', () => started.delete(proc));
  let err = '';
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
  const listening = new Promise<{ udp: string; http: string }>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`flowlb did not start in ${timeoutMs} ms:\n${err}\n${out}`));
    }, timeoutMs);
    proc.stdout!.on('data', () => {
      const m = /flowlb listening udp=(\S+) http=(\S+)/.exec(out);
      if (m) { clearTimeout(timer); resolve({ udp: m[1]!.split(',')[0]!, http: m[2]! }); }
    });
    proc.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    proc.on('exit', (code) => { clearTimeout(timer); reject(new Error(`flowlb exited with ${code} before listening:\n${err}`)); });
  });
  const rec = await listening;
  const m = /^\[?(.*?)\]?:(\d+)$/.exec(rec.udp)!;
  const httpPort = rec.http === 'off' ? 0 : Number(/:(\d+)$/.exec(rec.http)![1]);
  const base = `http://127.0.0.1:${httpPort}`;
  return {
    proc,
    udpHost: m[1]!,
    udpPort: Number(m[2]),
    httpPort,
    httpUrl: base,
    stderr: () => err,
    status: async () => (await fetch(`${base}/status`)).json(),
    metrics: async () => (await fetch(`${base}/metrics`)).text(),
    stop: (signal = 'SIGTERM') => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) { resolve(proc.exitCode); return; }
      const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
      proc.once('exit', (code) => { clearTimeout(timer); resolve(code); });
      proc.kill(signal);
    }),
  };
}

/** For afterEach: closes the clients and kills (SIGKILL) the services a test started, emptying both lists. */
export async function stopAll(running: Running[], clients: Client[] = []): Promise<void> {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(running.splice(0).map((r) => r.stop('SIGKILL')));
}

type Falsy = undefined | null | false | 0 | '';

/** Polls `check` every `everyMs` until it returns a truthy value (errors it throws count as not yet) and returns it. */
export async function waitFor<T>(check: () => T | Falsy | Promise<T | Falsy>, timeoutMs: number, what: string, everyMs = 20): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v as T;
      last = v;
    } catch (e) { last = e; }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${String(last)})`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** A client socket that collects every reply. */
export class Client {
  readonly socket: dgram.Socket;
  readonly replies: Buffer[] = [];
  constructor(family: 4 | 6 = 4) {
    this.socket = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
    this.socket.on('message', (m) => { this.replies.push(m); });
  }
  async bind(host: string): Promise<this> {
    await new Promise<void>((r) => this.socket.bind(0, host, () => r()));
    return this;
  }
  get port(): number { return this.socket.address().port; }
  send(payload: Buffer | string, port: number, host: string): Promise<void> {
    return new Promise((resolve, reject) => this.socket.send(payload, port, host, (e) => (e ? reject(e) : resolve())));
  }
  close(): void { try { this.socket.close(); } catch { /* closed */ } }
}

const configDirs: string[] = [];

/** Writes `obj` as a flowlb JSON config file in a fresh temporary folder; `removeConfigFiles` deletes them all. */
export function configFile(obj: unknown): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-test-'));
  configDirs.push(dir);
  const file = path.join(dir, 'flowlb.json');
  fs.writeFileSync(file, JSON.stringify(obj));
  return file;
}

/** Deletes every file `configFile` wrote (call it in afterEach). */
export function removeConfigFiles(): void {
  for (const d of configDirs.splice(0)) fs.rmSync(d, { recursive: true, force: true });
}
