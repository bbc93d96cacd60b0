/** Process helpers for benchmarks: CPU time from /proc, starting flowlb and the baselines. */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const CLK_TCK = 100;

/** User + system CPU seconds of a process (all its threads), from /proc/PID/stat. */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK;
}

export interface Flowlb {
  readonly proc: ChildProcess;
  readonly port: number;
  readonly httpPort: number;
  status(): Promise<any>;
  stop(): Promise<void>;
}

/** Starts `flowlb serve` on 127.0.0.1:udpPort (0: any free port) with a free status port. */
export async function startFlowlb(args: string[], udpPort = 0): Promise<Flowlb> {
  const proc = spawn(process.execPath, [path.join(ROOT, 'dist/src/cli.js'), 'serve', '--listen', `127.0.0.1:${udpPort}`, '--http', '127.0.0.1:0', '--log-level', 'warn', ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  const m = await new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('flowlb did not start')), 20_000);
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const r = /udp=\S+:(\d+) http=\S+:(\d+)/.exec(out);
      if (r) { clearTimeout(timer); resolve(r); }
    });
    proc.on('exit', (c) => { clearTimeout(timer); reject(new Error(`flowlb exited ${c}`)); });
  });
  const httpPort = Number(m[2]);
  return {
    proc, port: Number(m[1]), httpPort,
    status: async () => (await fetch(`http://127.0.0.1:${httpPort}/status`)).json(),
    stop: () => new Promise((resolve) => {
      if (proc.exitCode !== null || proc.signalCode !== null) { resolve(); return; }
      const kill = setTimeout(() => proc.kill('SIGKILL'), 8000);
      proc.once('exit', () => { clearTimeout(kill); resolve(); });
      proc.kill('SIGTERM');
    }),
  };
}

export interface Plain {
  readonly proc: ChildProcess;
  readonly port: number;
  count(): Promise<number>;
  stop(): Promise<void>;
}

export async function startPlain(mode: 'receiver' | 'echo', host = '127.0.0.1'): Promise<Plain> {
  const proc = fork(path.join(ROOT, 'dist/bench/lib/plain-servers.js'), [mode, host], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let out = '';
  const port = await new Promise<number>((resolve) => {
    proc.stdout!.on('data', (d: Buffer) => { out += d.toString(); const r = /port (\d+)/.exec(out); if (r) resolve(Number(r[1])); });
  });
  return {
    proc, port,
    count: () => new Promise((resolve) => { proc.once('message', (m: { count: number }) => resolve(m.count)); proc.send('count'); }),
    stop: () => new Promise((resolve) => { proc.once('exit', () => resolve()); proc.kill('SIGTERM'); }),
  };
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n === 0 ? NaN : n % 2 ? s[(n - 1) >> 1]! : (s[n / 2 - 1]! + s[n / 2]!) / 2;
}

export function writeResult(name: string, data: unknown): string {
  const dir = path.join(ROOT, 'results');
  fs.mkdirSync(dir, { recursive: true });
  const file = path.join(dir, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify(data, null, 2));
  return file;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
