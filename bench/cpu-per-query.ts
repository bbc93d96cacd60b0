/**
 * CPU cost per proxied DNS query: flowlb's proxy against nginx's stream UDP proxy and dnsdist, at one FIXED
 * offered rate, so every proxy does the same work and only its CPU differs.
 *
 * Every process of the proxy runs on CPU 0 (started under `taskset -c 0`; cluster workers, nginx workers and
 * dnsdist threads inherit it); dnsperf, the two nsd backends and this script run on CPU 1. The cost is the
 * user + system CPU of all the proxy's processes (/proc/PID/stat, every thread counted) over the measured
 * run, divided by the queries dnsperf got answers for. A 1 s warm-up at the same rate comes first (upstream
 * sockets, JIT), outside the measurement.
 *
 * Before each measurement one idle second records how many cores the rest of the machine keeps busy, and the
 * machine's total busy cores during the run are recorded too: on a shared machine, a proxy pinned to CPU 0
 * shares it with whatever else runs there, and its cycles per query grow with the cache and scheduler churn.
 *
 * Besides the three proxies (full runs): flowlb with 1 worker, and a bare single-process Node proxy
 * (bench/fixtures/bare-node-proxy.js), the floor for anything built on Node 20's dgram.
 *
 * Then one more flowlb run under `--cpu-prof` (primary and workers, through execArgv: Node 20 refuses
 * --cpu-prof in NODE_OPTIONS) at the same rate; the top self-time functions of the primary and of the busier
 * worker go into the JSON, the profiles themselves into results/prof/cpu-per-query/.
 *
 *   node dist/bench/cpu-per-query.js [--short] [--rate 5000] [--seconds 10] [--rounds 3] [--clients 8] [--top 15]
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import {
  backgroundBusyCores, busyCoresSince, flowlbBuild, freePort, HOST, launch, machineCpu, makeWorkDir, missingTools, peerSpecs, removeWorkDir, runDnsperf, startFlowlbProxy, startNsd, sumCpuSeconds, toolVersion, waitDnsAnswers,
  type Endpoint, type PeerSpec, type Proxy,
} from './lib/peers.js';
import { parseBenchArgs } from './lib/args.js';
import { median, ROOT, sleep, writeResult } from './lib/procs.js';

const args = parseBenchArgs('cpu-per-query', 'CPU per proxied DNS query at one fixed rate: flowlb against nginx and dnsdist (proxy on CPU 0, load on CPU 1), then a profiled flowlb run.', {
  short: { type: 'boolean', describe: 'Short run: fewer and shorter rounds, no 1-worker and bare Node variants' },
  rate: { type: 'number', default: 5000, check: 'positive', describe: 'Offered rate, queries/s (dnsperf -Q)' },
  seconds: { type: 'number', default: 10, short: 3, check: 'positive', describe: 'Length of each measured run, s' },
  rounds: { type: 'number', default: 3, short: 1, check: 'positive-int', describe: 'Rounds (medians are reported)' },
  clients: { type: 'number', default: 8, check: 'positive-int', describe: 'dnsperf client sockets (-c)' },
  top: { type: 'number', default: 15, check: 'positive-int', describe: 'Functions kept per profile (top self time)' },
});
const short = args.short;
const rate = args.rate;
const seconds = args.seconds;
const rounds = args.rounds;
const clients = args.clients;
const topN = args.top;
const WARMUP_SEC = 1;
const PROXY_CPU = '0';
const LOAD_CPU = '1';
const PROF_DIR = path.join(ROOT, 'results/prof/cpu-per-query');

interface Variant {
  readonly name: string;
  readonly label: string;
  readonly unavailable: string | null;
  start(dir: string, backends: readonly Endpoint[], execArgv?: string[]): Promise<Proxy>;
}

function variants(specs: PeerSpec[]): Variant[] {
  const byName = (n: string): PeerSpec => specs.find((s) => s.name === n)!;
  const out: Variant[] = [];
  for (const s of specs) {
    out.push({ name: s.name, label: s.label, unavailable: s.unavailable, start: (dir, backends) => s.start({ dir, backends, dns: true, cpus: PROXY_CPU }) });
    // With every process on one core, a second worker buys flowlb nothing but a second event loop: show both.
    if (s.name === 'flowlb' && !short) {
      out.push({
        name: 'flowlb-1w', label: 'flowlb proxy (1 worker)', unavailable: byName('flowlb').unavailable,
        start: (dir, backends) => startFlowlbProxy({ dir, backends, dns: true, cpus: PROXY_CPU, workers: 1 }),
      });
      // The floor for any proxy written on Node 20's dgram: one process, a connected upstream socket per client,
      // nothing else (bench/fixtures/bare-node-proxy.js). What flowlb costs above it is its own design's price.
      out.push({
        name: 'node-bare', label: 'bare Node proxy (1 process)', unavailable: null,
        start: async (dir, backends) => {
          const port = await freePort();
          const l = launch('node-bare', process.execPath, [path.join(ROOT, 'bench/fixtures/bare-node-proxy.js'), HOST, String(port), ...backends.map((b) => `${b.host}:${b.port}`)], { cpus: PROXY_CPU, cwd: dir });
          await waitDnsAnswers(port, l);
          return { ...l, port };
        },
      });
    }
  }
  return out;
}

interface Measure {
  readonly answered: number;
  readonly lostPct: number;
  readonly cpuSeconds: number;
  readonly usPerQuery: number;
  /** Per process (pid: CPU seconds over the run); for flowlb the first is the primary. */
  readonly perProcess: { pid: number; role: string; cpuSeconds: number; usPerQuery: number }[];
  /** The measured run on CLOCK_MONOTONIC, microseconds. */
  readonly windowUs: [number, number];
  /** Cores busy on the whole machine during the run (every process; ours take about one at most). */
  readonly machineBusyCores: number;
}

function perPidCpu(pids: number[]): Map<number, number> {
  return new Map(pids.map((p) => [p, sumCpuSeconds([p])]));
}

async function measure(p: Proxy): Promise<Measure> {
  await runDnsperf({ port: p.port, seconds: WARMUP_SEC, qps: rate, clients, cpus: LOAD_CPU });
  const pids = p.pids();
  const c0 = perPidCpu(pids);
  const t0 = monotonicUs();
  const m0 = machineCpu();
  const r = await runDnsperf({ port: p.port, seconds, qps: rate, clients, cpus: LOAD_CPU });
  const machineBusyCores = busyCoresSince(m0);
  const t1 = monotonicUs();
  const c1 = perPidCpu(pids);
  const appeared = p.pids().filter((x) => !pids.includes(x));
  if (appeared.length) console.log(`  note: ${appeared.length} process(es) of ${p.name} appeared during the run (not counted)`);
  const perProcess = pids.map((pid, i) => {
    const cpu = (c1.get(pid) ?? 0) - (c0.get(pid) ?? 0);
    return { pid, role: i === 0 ? 'main' : 'child', cpuSeconds: round(cpu, 3), usPerQuery: round((cpu * 1e6) / r.completed, 2) };
  });
  const cpu = perProcess.reduce((a, x) => a + x.cpuSeconds, 0);
  return {
    answered: r.completed, lostPct: round(r.lostPct, 3), cpuSeconds: round(cpu, 3), usPerQuery: round((cpu * 1e6) / r.completed, 2),
    perProcess, windowUs: [t0, t1], machineBusyCores,
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

// ---------------------------------------------------------------- profiles

interface ProfileNode { id: number; callFrame: { functionName: string; url: string; lineNumber: number }; children?: number[] }
interface CpuProfile { nodes: ProfileNode[]; samples: number[]; timeDeltas: number[]; startTime: number; endTime: number }
export interface SelfTime { fn: string; selfMs: number; pctOfBusy: number }

/** Microseconds on CLOCK_MONOTONIC: the clock V8's profiler stamps samples with (base::TimeTicks on Linux). */
function monotonicUs(): number {
  return Number(process.hrtime.bigint() / 1000n);
}

export interface ProfileSummary { totalMs: number; idlePct: number; gcPct: number; window: string; top: SelfTime[] }

/**
 * Self time per function (summed over call sites), top N by self time; idle time is reported apart. With a
 * window (monotonic microseconds), only samples inside it count, so start-up and shutdown stay out.
 */
export function summariseProfile(file: string, n: number, windowUs?: [number, number]): ProfileSummary {
  const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as CpuProfile;
  const nodeById = new Map(prof.nodes.map((x) => [x.id, x]));
  const inWindow = windowUs !== undefined && windowUs[0] < prof.endTime && windowUs[1] > prof.startTime;
  const selfUs = new Map<number, number>();
  // timeDeltas[i] is the time before sample i; attributing it to sample i is what Chrome DevTools does.
  let t = prof.startTime;
  for (let i = 0; i < prof.samples.length; i++) {
    const dt = Math.max(0, prof.timeDeltas[i] ?? 0);
    t += dt;
    if (inWindow && (t < windowUs![0] || t > windowUs![1])) continue;
    selfUs.set(prof.samples[i]!, (selfUs.get(prof.samples[i]!) ?? 0) + dt);
  }
  const byFn = new Map<string, number>();
  let total = 0, idle = 0, gc = 0;
  for (const [id, us] of selfUs) {
    const cf = nodeById.get(id)!.callFrame;
    total += us;
    if (cf.functionName === '(idle)') { idle += us; continue; }
    if (cf.functionName === '(garbage collector)') gc += us;
    const where = cf.url ? ` ${cf.url.replace(/^file:\/\//, '').replace(`${ROOT}/`, '').replace(/^node:/, 'node:')}:${cf.lineNumber + 1}` : '';
    const key = `${cf.functionName || '(anonymous)'}${where}`;
    byFn.set(key, (byFn.get(key) ?? 0) + us);
  }
  const busy = total - idle;
  const top = [...byFn.entries()].sort((a, b) => b[1] - a[1]).slice(0, n)
    .map(([fn, us]) => ({ fn, selfMs: round(us / 1000, 1), pctOfBusy: round((us / busy) * 100, 1) }));
  return {
    totalMs: round(total / 1000, 0), idlePct: round((idle / total) * 100, 1), gcPct: round((gc / busy) * 100, 1),
    window: inWindow ? 'the measured run only' : 'the whole process life (the measured window did not match the profile clock)', top,
  };
}

async function profileFlowlb(dir: string, backends: readonly Endpoint[]): Promise<unknown> {
  fs.mkdirSync(PROF_DIR, { recursive: true });
  for (const f of fs.readdirSync(PROF_DIR)) if (f.endsWith('.cpuprofile')) fs.rmSync(path.join(PROF_DIR, f));
  const p = await startFlowlbProxy({ dir, backends, dns: true, cpus: PROXY_CPU, execArgv: ['--cpu-prof', '--cpu-prof-dir', PROF_DIR] });
  const pids = p.pids();
  const m = await measure(p);
  const status = await p.status!();
  await p.stop();
  // Workers write their profile as they exit, after the primary's own exit began: wait for every file.
  const deadline = Date.now() + 10_000;
  let files: string[] = [];
  while (Date.now() < deadline) {
    files = fs.readdirSync(PROF_DIR).filter((f) => f.endsWith('.cpuprofile'));
    if (files.length >= pids.length) break;
    await sleep(100);
  }
  const pidOf = (f: string): number => Number(/^CPU\.\d+\.\d+\.(\d+)\./.exec(f)?.[1]);
  const workers = (status.workers as { pid: number; handled: number }[]).slice().sort((a, b) => b.handled - a.handled);
  const primaryFile = files.find((f) => pidOf(f) === p.pid);
  const workerFile = files.find((f) => pidOf(f) === workers[0]?.pid);
  return {
    note: 'a separate run under --cpu-prof (sampling adds a little CPU); only samples inside the measured dnsperf run count',
    measure: m,
    files: files.map((f) => path.relative(ROOT, path.join(PROF_DIR, f))),
    primary: primaryFile ? { pid: p.pid, ...summariseProfile(path.join(PROF_DIR, primaryFile), topN, m.windowUs) } : { error: `no profile for pid ${p.pid}` },
    worker: workerFile ? { pid: workers[0]!.pid, handled: workers[0]!.handled, ...summariseProfile(path.join(PROF_DIR, workerFile), topN, m.windowUs) } : { error: 'no worker profile' },
  };
}

// ---------------------------------------------------------------- main

const started = Date.now();
if (os.cpus().length < 2) console.log('note: fewer than 2 CPUs: the proxy and the load share CPU 0');
const missing = missingTools(['taskset', 'nsd', 'dnsperf']);
if (missing) {
  console.log(`cpu-per-query: skipped: ${missing}`);
  writeResult('cpu-per-query', { skipped: missing });
  process.exit(0);
}
// This script's own event loop and threads go on the load CPU too.
execFileSync('taskset', ['-a', '-pc', LOAD_CPU, String(process.pid)], { stdio: 'ignore' });

const all = variants(peerSpecs());
const skipped: Record<string, string> = {};
for (const v of all) if (v.unavailable) { skipped[v.name] = v.unavailable; console.log(`skipping ${v.label}: ${v.unavailable}`); }
const run = all.filter((v) => !v.unavailable);
const dir = makeWorkDir('cpq');
const nsds = [await startNsd({ dir, identity: 'backend-1', cpus: LOAD_CPU }), await startNsd({ dir, identity: 'backend-2', cpus: LOAD_CPU })];
const backends = nsds.map((x) => ({ host: '127.0.0.1', port: x.port }));
console.log(`${rate} qps x ${seconds} s, dnsperf -c ${clients}; proxy on CPU ${PROXY_CPU}, load and backends on CPU ${LOAD_CPU}; ${rounds} round(s)`);

const rows: { round: number; variant: string; backgroundBusyCores: number; measure: Measure }[] = [];
let profile: unknown = null;
try {
  for (let r = 0; r < rounds; r++) {
    for (const v of run) {
      const background = await backgroundBusyCores();
      const p = await v.start(dir, backends);
      try {
        await sleep(300);
        const m = await measure(p);
        rows.push({ round: r, variant: v.name, backgroundBusyCores: background, measure: m });
        console.log(`round ${r} ${v.label}: ${m.usPerQuery} us CPU/query (${m.cpuSeconds} s over ${m.answered} answered, ${m.lostPct}% lost; ` +
          `per process ${m.perProcess.map((x) => x.usPerQuery).join(' + ')}); machine: ${background} cores busy before, ${m.machineBusyCores} during`);
      } finally {
        await p.stop();
      }
    }
  }
  if (run.some((v) => v.name === 'flowlb')) {
    profile = await profileFlowlb(dir, backends);
    const pr = profile as { primary: Partial<ProfileSummary>; worker: Partial<ProfileSummary> };
    for (const [what, s] of [['primary', pr.primary], ['busier worker', pr.worker]] as const) {
      if (!s.top) continue;
      console.log(`\nflowlb ${what} profile over ${s.window} (idle ${s.idlePct}%), top self time, % of busy time:`);
      for (const t of s.top.slice(0, 10)) console.log(`  ${t.pctOfBusy.toFixed(1).padStart(5)}%  ${t.fn}`);
    }
  }
} finally {
  for (const x of nsds) await x.stop();
  removeWorkDir(dir);
}

const summary: Record<string, { label: string; usPerQuery: number; perRound: number[]; perProcessUs: number[]; backgroundBusyCores: number[] }> = {};
for (const v of run) {
  const mine = rows.filter((x) => x.variant === v.name);
  if (!mine.length) continue;
  // Per-process medians by position (flowlb: primary, then workers in pid order).
  const width = Math.max(...mine.map((x) => x.measure.perProcess.length));
  const perProcessUs = Array.from({ length: width }, (_, i) => round(median(mine.map((x) => x.measure.perProcess[i]?.usPerQuery ?? NaN).filter(Number.isFinite)), 2));
  summary[v.name] = {
    label: v.label, usPerQuery: round(median(mine.map((x) => x.measure.usPerQuery)), 2), perRound: mine.map((x) => x.measure.usPerQuery), perProcessUs,
    backgroundBusyCores: mine.map((x) => x.backgroundBusyCores),
  };
}
const ratios: Record<string, number> = {};
if (summary.flowlb) for (const [n, s] of Object.entries(summary)) if (n !== 'flowlb') ratios[n] = round(summary.flowlb.usPerQuery / s.usPerQuery, 2);

console.log(`\nCPU per answered query at ${rate} qps, all processes of the proxy on one core (medians of ${rounds}):`);
for (const s of Object.values(summary)) console.log(`  ${s.label.padEnd(26)} ${s.usPerQuery.toFixed(2).padStart(7)} us   (rounds: ${s.perRound.join(', ')}; per process: ${s.perProcessUs.join(' + ')})`);
for (const [n, x] of Object.entries(ratios)) console.log(`  flowlb (2 workers) / ${summary[n]!.label}: ${x}`);

const file = writeResult('cpu-per-query', {
  short, rate, seconds, rounds, clients, warmupSec: WARMUP_SEC, proxyCpu: PROXY_CPU, loadCpu: LOAD_CPU,
  flowlb: flowlbBuild(),
  machine: { cpus: os.cpus().length, node: process.version, loadAvgAfter: os.loadavg() },
  tools: { nginx: toolVersion('nginx', ['-v'], /nginx\/(\S+)/), dnsdist: toolVersion('dnsdist', ['--version'], /dnsdist (\S+)/), dnsperf: toolVersion('dnsperf', ['-h'], /Version (\S+)/) },
  skipped, summary, ratiosFlowlbOver: ratios, rows, profile,
  elapsedSec: Math.round((Date.now() - started) / 1000),
});
console.log(`written ${file} in ${Math.round((Date.now() - started) / 1000)} s`);
