/**
 * Polls a running flowlb's /status every `intervalMs` and records, per worker and over time, what the
 * balancing benchmarks report: the balancer's smoothed view (cpuUtil, elu, targetShare, buckets) next to
 * figures measured here without smoothing (CPU from /proc/PID/stat, packets dispatched per second from the
 * primary's per-worker counter deltas). Optionally scrapes /metrics too, for the dispatch latency histogram.
 *
 * The balancer's cpuUtil and elu are EWMAs (alpha 0.3 per report, every 100 ms by default, load-model.ts), so a step shows
 * ~90% after ~0.65 s; `procCpu` and `pps` are raw per-interval figures. Bounded: stop() ends it, and a poll
 * that takes longer than the interval delays the next one instead of piling up.
 */
import type { ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import { sleep, startFlowlb } from './procs.js';

const CLK_TCK = 100;

export interface WorkerSample {
  readonly id: number;
  readonly pid: number;
  /** Balancer's smoothed CPU utilisation (1 = one core). */
  readonly cpuUtil: number;
  /** Balancer's smoothed event-loop utilisation, 0..1. */
  readonly elu: number;
  /** Event-loop utilisation of the worker's last report (one report interval, unsmoothed). */
  readonly eluLast: number;
  /** CPU utilisation of the worker's last report, unsmoothed. */
  readonly cpuLast: number;
  /** The balancer's running mean distance between a report's own index and the index (/status stepNoise). */
  readonly stepNoise: number;
  /** CPU of the worker process over the last interval, from /proc (1 = one core); NaN on the first sample. */
  readonly procCpu: number;
  /**
   * The worker's main thread over the last interval, from /proc/PID/task/PID/schedstat: time it waited on a run
   * queue (runnable, not running) per second of wall time, and its time on a CPU over (on CPU + waiting). NaN on the
   * first sample or where schedstat is absent.
   */
  readonly waitFrac: number;
  readonly schedShare: number;
  /** The balancer's recent scheduler share of the worker (/status schedShare). */
  readonly lbSchedShare: number;
  readonly buckets: number;
  readonly targetShare: number;
  readonly index: number;
  readonly queueDepth: number;
  /**
   * Packets the primary dispatched to the worker per second over the last interval (raw; NaN on the first
   * sample). From the primary's live counter: the worker's own `handled` only moves once per report.
   */
  readonly pps: number;
  readonly handled: number;
  /** Sum of the worker's drop counters (all reasons). */
  readonly drops: number;
  readonly flowsActive: number;
  readonly rssBytes: number;
}

export interface Sample {
  /** ms since the sampler started. */
  readonly tMs: number;
  readonly imbalance: number;
  readonly rounds: number;
  readonly migrationsCompleted: number;
  /** The balancer's index steps so far, and those of them that the scheduler share decided (/status). */
  readonly indexSteps: number;
  readonly indexStepsBySched: number;
  readonly migrationTimeouts: number;
  readonly received: number;
  /** Sum of the primary's drop counters. */
  readonly primaryDrops: number;
  readonly workers: readonly WorkerSample[];
  /** Whole machine: busy CPU over the last interval, in cores (from /proc/stat; every process, ours or not). */
  readonly machineBusy: number;
  /** flowlb's primary + workers CPU over the last interval, in cores (from /proc/PID/stat). */
  readonly flowlbCpu: number;
  /** Dispatch latency (primary stamp -> worker starts the batch) over the last interval, from /metrics. */
  readonly dispatchLatency?: { readonly samples: number; readonly p50Ms: number; readonly p99Ms: number };
}

export interface SamplerOptions {
  readonly httpPort: number;
  readonly intervalMs?: number;
  /** Also scrape /metrics each poll for the dispatch latency histogram. Default false. */
  readonly metrics?: boolean;
}

/** [ns on a CPU, ns waiting on a run queue] of a thread, from schedstat; NaNs where it cannot be read. */
function schedstat(pid: number): [number, number] {
  try {
    const f = fs.readFileSync(`/proc/${pid}/task/${pid}/schedstat`, 'utf8').split(' ');
    return [Number(f[0]), Number(f[1])];
  } catch {
    return [NaN, NaN];
  }
}

function procCpuSeconds(pid: number): number {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / CLK_TCK;
  } catch {
    return NaN;
  }
}

/** [busy, total] CPU ticks of the whole machine since boot. */
function machineTicks(): [number, number] {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
    return [total - f[3]! - f[4]!, total];
  } catch {
    return [NaN, NaN];
  }
}

function sumValues(o: Record<string, number> | undefined): number {
  let s = 0;
  for (const v of Object.values(o ?? {})) s += v;
  return s;
}

/** Cumulative `le` buckets of one histogram in a Prometheus text exposition. */
export function parseHistogram(text: string, name: string): { le: number[]; cum: number[] } {
  const le: number[] = [], cum: number[] = [];
  const re = new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"[^}]*\\} (\\S+)$`, 'gm');
  for (let m = re.exec(text); m; m = re.exec(text)) {
    le.push(m[1] === '+Inf' ? Infinity : Number(m[1]));
    cum.push(Number(m[2]));
  }
  return { le, cum };
}

/**
 * Quantile of a histogram given as per-bucket counts: the upper bound of the bucket the quantile falls in
 * (Prometheus-style without interpolation, so it errs high by at most one bucket).
 */
export function histogramQuantile(le: readonly number[], counts: readonly number[], q: number): number {
  const total = counts.reduce((a, b) => a + b, 0);
  if (total === 0) return NaN;
  const want = q * total;
  let acc = 0;
  for (let i = 0; i < counts.length; i++) {
    acc += counts[i]!;
    if (acc >= want) return le[i]!;
  }
  return le[le.length - 1]!;
}

export class Sampler {
  readonly samples: Sample[] = [];
  readonly marks: { tMs: number; label: string }[] = [];
  private readonly intervalMs: number;
  private readonly t0 = performance.now();
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private stopped = false;
  private last: { tMs: number; cpu: Map<number, number>; sched: Map<number, [number, number]>; dispatched: number[]; machine: [number, number]; primaryCpu: number } | null = null;
  private lastHist: number[] | null = null;

  constructor(private readonly opts: SamplerOptions) {
    this.intervalMs = opts.intervalMs ?? 250;
  }

  /** ms since the sampler was created (the time base of every sample and mark). */
  now(): number {
    return performance.now() - this.t0;
  }

  mark(label: string): void {
    this.marks.push({ tMs: this.now(), label });
  }

  start(): this {
    const loop = async (): Promise<void> => {
      if (this.stopped) return;
      const began = performance.now();
      try { await this.poll(); } catch { /* a missed poll is a gap in the series, not a failure */ }
      if (this.stopped) return;
      this.timer = setTimeout(() => { this.running = loop(); }, Math.max(0, this.intervalMs - (performance.now() - began)));
    };
    this.running = loop();
    return this;
  }

  async stop(): Promise<Sample[]> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    return this.samples;
  }

  private async poll(): Promise<void> {
    const base = `http://127.0.0.1:${this.opts.httpPort}`;
    const ctl = AbortSignal.timeout(Math.max(1000, this.intervalMs * 4));
    const st = (await (await fetch(`${base}/status`, { signal: ctl })).json()) as any;
    const tMs = this.now();
    const machine = machineTicks();
    const primaryCpu = procCpuSeconds(st.pid);
    const prev = this.last;
    const dt = prev ? (tMs - prev.tMs) / 1000 : 0;
    const cpu = new Map<number, number>();
    const sched = new Map<number, [number, number]>();
    const dispatched: number[] = [];
    const workers: WorkerSample[] = [];
    for (const w of st.workers as any[]) {
      const c = procCpuSeconds(w.pid);
      cpu.set(w.pid, c);
      const ss = schedstat(w.pid), pss = prev?.sched.get(w.pid);
      sched.set(w.pid, ss);
      const dRun = pss ? ss[0] - pss[0] : NaN, dWait = pss ? ss[1] - pss[1] : NaN;
      dispatched.push(w.dispatchedPackets);
      const prevCpu = prev?.cpu.get(w.pid);
      workers.push({
        id: w.id, pid: w.pid, cpuUtil: w.cpuUtil, elu: w.elu, eluLast: w.eluLast ?? NaN, cpuLast: w.cpuLast ?? NaN, stepNoise: w.stepNoise ?? NaN,
        procCpu: prev && prevCpu !== undefined && dt > 0 ? (c - prevCpu) / dt : NaN,
        waitFrac: dt > 0 ? dWait / (dt * 1e9) : NaN,
        schedShare: dRun + dWait > 0 ? dRun / (dRun + dWait) : NaN,
        lbSchedShare: w.schedShare ?? NaN,
        buckets: w.buckets, targetShare: w.targetShare, index: w.index, queueDepth: w.queueDepth,
        pps: prev && dt > 0 && prev.dispatched[w.id] !== undefined ? (w.dispatchedPackets - prev.dispatched[w.id]!) / dt : NaN,
        handled: w.handled, drops: sumValues(w.drops), flowsActive: w.flowsActive, rssBytes: w.rssBytes,
      });
    }
    let dispatchLatency: Sample['dispatchLatency'];
    if (this.opts.metrics) {
      const text = await (await fetch(`${base}/metrics`, { signal: ctl })).text();
      const h = parseHistogram(text, 'flowlb_dispatch_latency_seconds');
      if (this.lastHist && this.lastHist.length === h.cum.length) {
        const counts = h.cum.map((c, i) => c - this.lastHist![i]! - (i > 0 ? h.cum[i - 1]! - this.lastHist![i - 1]! : 0));
        const leMs = h.le.map((x) => x * 1000);
        dispatchLatency = {
          samples: counts.reduce((a, b) => a + b, 0),
          p50Ms: histogramQuantile(leMs, counts, 0.5),
          p99Ms: histogramQuantile(leMs, counts, 0.99),
        };
      }
      this.lastHist = h.cum;
    }
    let flowlbCpu = NaN, machineBusy = NaN;
    if (prev && dt > 0) {
      machineBusy = (machine[0] - prev.machine[0]) / CLK_TCK / dt;
      flowlbCpu = (primaryCpu - prev.primaryCpu) / dt + workers.reduce((a, w) => a + w.procCpu, 0);
    }
    this.last = { tMs, cpu, sched, dispatched, machine, primaryCpu };
    this.samples.push({
      tMs, imbalance: st.imbalance, rounds: st.rounds, indexSteps: st.indexSteps ?? NaN, indexStepsBySched: st.indexStepsBySched ?? NaN,
      migrationsCompleted: st.migrations.completed, migrationTimeouts: st.migrations.timeouts,
      received: st.received, primaryDrops: sumValues(st.dropped), workers, machineBusy, flowlbCpu,
      ...(dispatchLatency ? { dispatchLatency } : {}),
    });
  }
}

/** max / mean of the values (1 = perfectly even); NaN when the mean is 0 or a value is missing. */
export function maxOverMean(values: readonly number[]): number {
  if (values.length === 0 || values.some((v) => !Number.isFinite(v))) return NaN;
  const mean = values.reduce((a, b) => a + b, 0) / values.length;
  return mean > 0 ? Math.max(...values) / mean : NaN;
}

/** Samples with fromMs <= tMs < toMs. */
export function window(samples: readonly Sample[], fromMs: number, toMs = Infinity): Sample[] {
  return samples.filter((s) => s.tMs >= fromMs && s.tMs < toMs);
}

export function mean(xs: readonly number[]): number {
  const v = xs.filter((x) => Number.isFinite(x));
  return v.length ? v.reduce((a, b) => a + b, 0) / v.length : NaN;
}

export function percentile(xs: readonly number[], q: number): number {
  const v = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return NaN;
  return v[Math.min(v.length - 1, Math.max(0, Math.ceil(q * v.length) - 1))]!;
}

/** Compact per-sample rows for results JSON (one object per worker per sample would be verbose). */
export function compactSeries(samples: readonly Sample[]): unknown[] {
  const r3 = (x: number): number | null => (Number.isFinite(x) ? Math.round(x * 1000) / 1000 : null);
  return samples.map((s) => ({
    t: r3(s.tMs / 1000),
    imbalance: r3(s.imbalance),
    moves: s.migrationsCompleted,
    steps: s.indexSteps,
    stepsBySched: s.indexStepsBySched,
    drops: s.primaryDrops + s.workers.reduce((a, w) => a + w.drops, 0),
    elu: s.workers.map((w) => r3(w.elu)),
    eluLast: s.workers.map((w) => r3(w.eluLast)),
    cpuLast: s.workers.map((w) => r3(w.cpuLast)),
    stepNoise: s.workers.map((w) => r3(w.stepNoise)),
    index: s.workers.map((w) => r3(w.index)),
    cpuUtil: s.workers.map((w) => r3(w.cpuUtil)),
    procCpu: s.workers.map((w) => r3(w.procCpu)),
    waitFrac: s.workers.map((w) => r3(w.waitFrac)),
    schedShare: s.workers.map((w) => r3(w.schedShare)),
    lbSchedShare: s.workers.map((w) => r3(w.lbSchedShare)),
    pps: s.workers.map((w) => Math.round(Number.isFinite(w.pps) ? w.pps : 0)),
    buckets: s.workers.map((w) => w.buckets),
    share: s.workers.map((w) => r3(w.targetShare)),
    queue: s.workers.map((w) => w.queueDepth),
    machineBusy: r3(s.machineBusy),
    flowlbCpu: r3(s.flowlbCpu),
    ...(s.dispatchLatency ? { dispatchP99Ms: s.dispatchLatency.p99Ms } : {}),
  }));
}

// ---------------------------------------------------------------------------------------------------
// flowlb process and /status helpers shared by the balancing benchmarks.

export interface Lb { proc: ChildProcess; port: number; httpPort: number; status(): Promise<any>; stop(): Promise<void> }

/** flowlb on a given UDP port (so a second run keeps the clients' 4-tuples). */
export function startOn(udpPort: number, args: string[]): Promise<Lb> {
  return startFlowlb(args, udpPort);
}

/**
 * A UDP port that is free now, chosen below the kernel's ephemeral range (net.ipv4.ip_local_port_range,
 * 32768+ by default): the benchmarks reuse it across several flowlb runs while their clients keep opening
 * ephemeral sockets, and an ephemeral pick could be taken by one of those in between.
 */
export async function freeUdpPort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = 20_000 + Math.floor(Math.random() * 12_000);
    const s = dgram.createSocket('udp4');
    const ok = await new Promise<boolean>((r) => { s.once('error', () => r(false)); s.bind(port, '127.0.0.1', () => r(true)); });
    await new Promise<void>((r) => { try { s.close(() => r()); } catch { r(); } });
    if (ok) return port;
  }
  throw new Error('no free UDP port in 20000-32000');
}

/** Waits (bounded) until no worker has packets queued: a run must not start on the previous one's backlog. */
export async function waitIdle(lb: Lb, limitMs: number): Promise<boolean> {
  const end = Date.now() + limitMs;
  while (Date.now() < end) {
    const st = await lb.status();
    if (st.workers.every((w: { queueDepth: number }) => w.queueDepth === 0)) return true;
    await sleep(200);
  }
  return false;
}

export function sumDrops(st: any): Record<string, number> {
  const out: Record<string, number> = {};
  const add = (o: Record<string, number>): void => { for (const [k, v] of Object.entries(o ?? {})) out[k] = (out[k] ?? 0) + v; };
  add(st.dropped);
  for (const w of st.workers) { add(w.drops); if (w.replyErrors > 0) add({ reply_errors: w.replyErrors }); }
  // Datagrams the kernel dropped at flowlb's front sockets (receive buffer full) never reach flowlb's counters.
  const kernel = (st.kernelDrops ?? []).reduce((a: number, x: number | null) => a + (x ?? 0), 0);
  if (kernel > 0) out.kernel_front_rcvbuf = kernel;
  return out;
}

export function diffDrops(a: Record<string, number>, b: Record<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const k of new Set([...Object.keys(a), ...Object.keys(b)])) { const d = (b[k] ?? 0) - (a[k] ?? 0); if (d) out[k] = d; }
  return out;
}


/**
 * Waits (at most `maxWaitMs`) until the whole machine has been nearly idle (busy below `busyCores`) for
 * `forMs`: other people's benchmarks on the same 2 cores move every figure here. Returns what it saw;
 * a benchmark that runs anyway after the wait records that it was not quiet.
 */
export async function waitForQuiet(maxWaitMs: number, busyCores = 0.4, forMs = 3000): Promise<{ quiet: boolean; waitedMs: number; busyCores: number }> {
  const t0 = performance.now();
  let quietSince = -1, last = machineTicks(), lastT = performance.now(), busy = NaN;
  let told = false;
  for (;;) {
    await sleep(500);
    const now = machineTicks(), t = performance.now();
    busy = (now[0] - last[0]) / CLK_TCK / ((t - lastT) / 1000);
    last = now; lastT = t;
    if (busy < busyCores) { if (quietSince < 0) quietSince = t; } else quietSince = -1;
    if (quietSince >= 0 && t - quietSince >= forMs) return { quiet: true, waitedMs: t - t0, busyCores: busy };
    if (t - t0 >= maxWaitMs) return { quiet: false, waitedMs: t - t0, busyCores: busy };
    if (!told && t - t0 > 2000) { told = true; console.log(`(waiting up to ${Math.round(maxWaitMs / 1000)} s for the machine to be quiet: ${busy.toFixed(2)} cores busy)`); }
  }
}

/**
 * Stops a flowlb at once: SIGKILL to its workers and its primary. After an overloaded run a SIGTERM would have
 * it serve seconds of backlog first (up to shutdownTimeout), and a killed primary alone leaves workers that
 * drain their queues on the shared cores while the next measurement runs.
 */
export async function killLb(lb: Lb): Promise<void> {
  let pids: number[] = [];
  try {
    pids = ((await Promise.race([lb.status(), sleep(1000).then(() => null)]))?.workers ?? []).map((w: { pid: number }) => w.pid);
  } catch { /* not answering: the primary's kill below still ends it, and its workers follow it (orphan watchdog) */ }
  // The primary first: killed after its workers, it saw them die and forked replacements, which then failed their
  // cluster handshake with EPIPE as it went (an unhandled-error trace in the benchmark's output).
  if (lb.proc.exitCode === null && lb.proc.signalCode === null) {
    const exited = new Promise((r) => lb.proc.once('exit', r));
    lb.proc.kill('SIGKILL');
    await exited;
  }
  for (const pid of pids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
}
