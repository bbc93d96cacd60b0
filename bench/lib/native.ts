/**
 * The native traffic tool (bench/native/flowgen.c): builds it on demand and runs it.
 *
 * buildFlowgen() compiles the source with `cc -O2 -Wall` ($CC if set; gcc if there is no cc) into dist/native/flowgen when the binary is
 * missing or older than the source. Without a C compiler it returns { ok: false, reason: 'skipped: no C
 * compiler ...' } so a benchmark can say so; a compile error is returned the same way with the compiler's output.
 */
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository: the nearest directory above this file with a package.json (from bench/lib or dist/bench/lib). */
function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(dir, 'package.json')) && path.dirname(dir) !== dir) dir = path.dirname(dir);
  return dir;
}
const ROOT = findRoot();

export const FLOWGEN_SOURCE = path.join(ROOT, 'bench/native/flowgen.c');
export const FLOWGEN_BINARY = path.join(ROOT, 'dist/native/flowgen');

export type Build = { ok: true; path: string; compiled: boolean } | { ok: false; reason: string };

export function buildFlowgen(): Build {
  const srcTime = fs.statSync(FLOWGEN_SOURCE).mtimeMs;
  let binTime = -1;
  try { binTime = fs.statSync(FLOWGEN_BINARY).mtimeMs; } catch { /* not built yet */ }
  if (binTime >= srcTime) return { ok: true, path: FLOWGEN_BINARY, compiled: false };
  // $CC when set, else cc, else gcc (a Debian gcc package provides both names).
  const compilers = process.env.CC ? [process.env.CC] : ['cc', 'gcc'];
  fs.mkdirSync(path.dirname(FLOWGEN_BINARY), { recursive: true });
  // Compile to a private name and rename: two builds at once (tests, benchmarks) never see a half-written file.
  const tmp = `${FLOWGEN_BINARY}.${process.pid}.tmp`;
  for (const cc of compilers) {
    const r = spawnSync(cc, ['-O2', '-Wall', '-o', tmp, FLOWGEN_SOURCE], { encoding: 'utf8' });
    if (r.error && (r.error as NodeJS.ErrnoException).code === 'ENOENT') continue;
    if (r.error || r.status !== 0) {
      try { fs.unlinkSync(tmp); } catch { /* nothing written */ }
      return { ok: false, reason: `flowgen did not compile (${cc} exit ${r.status ?? r.error?.message}):\n${r.stderr}` };
    }
    fs.renameSync(tmp, FLOWGEN_BINARY);
    return { ok: true, path: FLOWGEN_BINARY, compiled: true };
  }
  return { ok: false, reason: `skipped: no C compiler (${compilers.join(', ')} not found; install gcc, e.g. apt-get install gcc libc6-dev)` };
}

export interface FlowgenRtt { count: number; min: number; mean: number; p50: number; p90: number; p99: number; p999: number; max: number }
export interface FlowgenResult {
  runId: number; flows: number; sockets: number; ports: number[]; sizeBytes: number; offeredPps: number;
  warmup: { enabled: boolean; passes: number; sent: number; received: number; lost: number; flowsWithoutReply: number; seconds: number };
  /** Measured phase (after the warm-up). */
  sent: number; received: number; lost: number; reordered: number; duplicated: number; lateBeyondWindow: number; invalid: number;
  lossPct: number; seconds: number; sentPps: number; receivedPps: number; sendBufferFull: number;
  /** Per flow over both phases: every packet sent to it came back / not. */
  flowsComplete: number; flowsWithLoss: number; flowsWithoutReply: number;
  cpuSeconds: { total: number; measure: number };
  /** Nanoseconds, from a log-linear histogram (32 sub-buckets per power of two). */
  rttNs: FlowgenRtt & { histogram: string };
  interrupted: boolean;
}
export interface FlowgenEvent { event: string; [k: string]: unknown }

export interface FlowgenOptions {
  target: { host: string; port: number };
  flows: number;
  /** Packets per second in the measured phase; 0 = as fast as it can. */
  ratePps: number;
  durationS?: number;
  count?: number;
  sizeBytes?: number;
  warmup?: boolean;
  warmupRatePps?: number;
  warmupPasses?: number;
  /** Idle time after the warm-up ({"event":"warmup-done"}) before the measured phase ({"event":"measure"}). */
  warmupPauseMs?: number;
  drainMs?: number;
  sockets?: number;
  /** Bind the sockets to these ports (from portBase up) instead of kernel-chosen ones: the same flows as an earlier run. */
  portBase?: number;
  progressMs?: number;
  /** Called for every stderr event line ({"event":"measure"} when the measured phase starts). */
  onEvent?: (e: FlowgenEvent) => void;
  /** Kill it (SIGKILL) after this long; default: a generous bound from the options. */
  timeoutMs?: number;
}

function flowgenArgs(o: FlowgenOptions): string[] {
  const a = ['--target', `${o.target.host}:${o.target.port}`, '--flows', String(o.flows), '--rate', o.ratePps > 0 ? String(o.ratePps) : 'max'];
  if (o.durationS !== undefined) a.push('--duration', String(o.durationS));
  if (o.count !== undefined) a.push('--count', String(o.count));
  if (o.sizeBytes !== undefined) a.push('--size', String(o.sizeBytes));
  if (o.warmup) a.push('--warmup');
  if (o.warmupRatePps !== undefined) a.push('--warmup-rate', String(o.warmupRatePps));
  if (o.warmupPasses !== undefined) a.push('--warmup-passes', String(o.warmupPasses));
  if (o.warmupPauseMs !== undefined) a.push('--warmup-pause-ms', String(o.warmupPauseMs));
  if (o.drainMs !== undefined) a.push('--drain-ms', String(o.drainMs));
  if (o.sockets !== undefined) a.push('--sockets', String(o.sockets));
  if (o.portBase !== undefined) a.push('--port-base', String(o.portBase));
  if (o.progressMs !== undefined) a.push('--progress-ms', String(o.progressMs));
  return a;
}

/** Runs flowgen and resolves with its JSON result; rejects on a non-zero exit, bad output or the timeout. */
export function runFlowgen(bin: string, o: FlowgenOptions): Promise<FlowgenResult> {
  const warmS = o.warmup ? ((o.warmupPasses ?? 3) * (o.flows / (o.warmupRatePps ?? 20_000) + 1)) : 0;
  const timeoutMs = o.timeoutMs ?? Math.round((warmS + (o.warmupPauseMs ?? 0) / 1000 + (o.durationS ?? 5) + 30) * 1000);
  return runJson(bin, flowgenArgs(o), timeoutMs, o.onEvent) as Promise<FlowgenResult>;
}

export interface ServerResult { mode: 'sink' | 'echo'; port: number; packets: number; echoed: number; activeSeconds: number; pps: number; cpuSeconds: number }

/** Starts flowgen as a counting sink or an echo on host:port (port 0: any) for durationS; resolves once listening. */
export async function startFlowgenServer(bin: string, mode: 'sink' | 'echo', durationS: number, host = '127.0.0.1', port = 0): Promise<{ port: number; result: Promise<ServerResult> }> {
  let listening!: (p: number) => void;
  const portP = new Promise<number>((resolve) => { listening = resolve; });
  const result = runJson(bin, [`--${mode}`, `${host}:${port}`, '--duration', String(durationS)], (durationS + 15) * 1000, (e) => {
    if (e.event === 'listening') listening(e.port as number);
  }) as Promise<ServerResult>;
  return { port: await Promise.race([portP, result.then(() => { throw new Error(`flowgen ${mode} ended before listening`); })]), result };
}

function runJson(bin: string, args: string[], timeoutMs: number, onEvent?: (e: FlowgenEvent) => void): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '', errLine = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`flowgen ${args.join(' ')}: killed after ${timeoutMs} ms\n${err}`)); }, timeoutMs);
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    child.stderr.on('data', (d: Buffer) => {
      errLine += d.toString();
      let nl: number;
      while ((nl = errLine.indexOf('\n')) >= 0) {
        const line = errLine.slice(0, nl);
        errLine = errLine.slice(nl + 1);
        if (line.startsWith('{')) {
          try { onEvent?.(JSON.parse(line) as FlowgenEvent); continue; } catch { /* not an event: keep it */ }
        }
        err += line + '\n';
      }
    });
    child.once('error', (e) => { clearTimeout(timer); reject(e); });
    child.once('close', (code) => {
      clearTimeout(timer);
      if (code !== 0) { reject(new Error(`flowgen ${args.join(' ')} exited ${code}: ${err.trim()}`)); return; }
      try { resolve(JSON.parse(out)); } catch { reject(new Error(`flowgen printed no JSON result: ${out.slice(0, 500)} ${err}`)); }
    });
  });
}
