/**
 * Interference: a CPU hog (a busy-loop child) starts mid-run on the core of worker 0 and stops later. Worker 0
 * is pinned to CPU 0 with the hog, worker 1 to CPU 1 (taskset -a: every thread); the primary and the client
 * are not pinned. The adaptive balancer should see worker 0's CPU fall behind its event-loop utilisation
 * (contended, not busy) and shift buckets to worker 1, then shift them back when the hog is gone.
 *
 * Reported per phase (before / hog / after): buckets and target share per worker, packets per worker, max/mean
 * worker utilisation (ELU, as the balancer sees it), client RTT; and the time from each load shift until
 * max/mean ELU is <= 1.10 again for at least 1 s (target: within 2 s). A static run (--no-balance) under the
 * same hog is the baseline.
 *
 *   node dist/bench/interference.js [--short] [--cost-us 200] [--flows 256] [--load 0.45] [--seconds 30]
 *                                   [--rounds 1] [--interval-ms 250] [--quiet-wait 90] [--no-static] [--compare "ARGS"]
 * --load is the offered rate as a fraction of 2e6 / costUs (two workers' ideal capacity). It must put each
 * worker well above half a core: a mostly idle process sharing a core with a busy loop is woken ahead of it
 * (the scheduler favours the task that slept), so below half a core the hog costs worker 0 almost nothing.
 * Full runs first wait (at most --quiet-wait s, default 90) for the machine to be idle before each run.
 * Writes results/interference.json and results/interference.svg.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runGenerator } from '../src/gen/run.js';
import { renderChart, type TopLevelSpec } from './lib/chart.js';
import { parseBenchArgs } from './lib/args.js';
import { median, ROOT, writeResult } from './lib/procs.js';
import { startRttClient, type ClientResult } from './lib/rtt-client.js';
import {
  compactSeries, diffDrops, freeUdpPort, killLb, maxOverMean, mean, Sampler, startOn, sumDrops, waitForQuiet, waitIdle, window, type Sample,
} from './lib/sampler.js';

const args = parseBenchArgs('interference', 'Interference: a CPU hog on worker 0\'s core mid-run; static hashing against the adaptive balancer (imbalance, time back to balanced, RTT).', {
  short: { type: 'boolean', describe: 'Short run: 14 s runs, no quiet wait' },
  'cost-us': { type: 'number', default: 200, check: 'positive', describe: 'CPU the burn handler spends per packet, us' },
  flows: { type: 'number', default: 256, check: 'positive-int', describe: 'Client flows (uniform)' },
  load: { type: 'number', default: 0.45, check: 'positive', describe: 'Offered rate as a fraction of 2e6 / cost-us (two workers\' ideal capacity)' },
  seconds: { type: 'number', default: 30, short: 14, check: 'positive', describe: 'Length of each run, s (hog from 30% to 70% of it)' },
  rounds: { type: 'number', default: 1, check: 'positive-int', describe: 'Rounds (medians are reported)' },
  'interval-ms': { type: 'number', default: 250, check: 'positive', describe: 'Sampling interval of /status, ms' },
  'quiet-wait': { type: 'number', default: 90, short: 0, check: 'nonnegative', describe: 'Wait at most this long for the machine to be idle before each run, s (0: no wait)' },
  compare: { type: 'string', verbatim: true, describe: 'A third run: adaptive with these extra flowlb flags, e.g. "--rebalance-interval 500ms"' },
  'no-static': { type: 'boolean', describe: 'Adaptive runs only (no static --no-balance baseline)' },
});

const BALANCED = 1.1;
const SUSTAIN_MS = 1000;

function pin(pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-pc', String(cpu), String(pid)], { stdio: 'ignore' });
}

/** A busy loop on `cpu`, ending by itself after `ms` (so it cannot outlive the benchmark). */
function startHog(cpu: number, ms: number): ChildProcess {
  return spawn('taskset', ['-c', String(cpu), process.execPath, '-e', `const e = Date.now() + ${ms}; while (Date.now() < e) {}`], { stdio: 'ignore' });
}

function eluSpread(s: Sample): number {
  return maxOverMean(s.workers.map((w) => w.elu));
}

/**
 * max/mean of the workers' UNSMOOTHED ELU (each worker's last reports, averaged over the samples of the
 * trailing RAW_WINDOW_MS): what the workers did, without the balancer's EWMA lag in the measurement.
 */
const RAW_WINDOW_MS = 500;
function rawSpreads(samples: readonly Sample[]): Map<Sample, number> {
  const out = new Map<Sample, number>();
  for (let i = 0; i < samples.length; i++) {
    const s = samples[i]!;
    const win = samples.slice(0, i + 1).filter((x) => x.tMs > s.tMs - RAW_WINDOW_MS);
    out.set(s, maxOverMean(s.workers.map((_, k) => mean(win.map((x) => x.workers[k]!.eluLast)))));
  }
  return out;
}

/**
 * Time from `shiftMs` until max/mean ELU is <= BALANCED for SUSTAIN_MS, counted from the worst sample in
 * the 3 s after the shift (the smoothed ELU needs a moment to show the shift at all). 0 if it never left
 * the band; null if it did not come back before `endMs`.
 */
function timeToBalance(samples: readonly Sample[], shiftMs: number, endMs: number, spread: (s: Sample) => number = eluSpread): { peak: number; ms: number | null } {
  const after = window(samples, shiftMs, endMs);
  const early = window(after, shiftMs, shiftMs + 3000);
  let peak = 0, peakAt = shiftMs;
  for (const s of early) { const v = spread(s); if (v > peak) { peak = v; peakAt = s.tMs; } }
  if (!(peak > BALANCED)) return { peak, ms: 0 };
  for (const s of after) {
    if (s.tMs < peakAt) continue;
    const span = window(after, s.tMs, s.tMs + SUSTAIN_MS);
    if (s.tMs + SUSTAIN_MS > endMs) break;
    if (span.every((x) => spread(x) <= BALANCED)) return { peak, ms: s.tMs - shiftMs };
  }
  return { peak, ms: null };
}

const short = args.short;
const costUs = args['cost-us'], flows = args.flows, load = args.load;
const seconds = args.seconds, rounds = args.rounds, intervalMs = args['interval-ms'];
const durationMs = seconds * 1000, hogOnMs = Math.round(durationMs * 0.3), hogOffMs = Math.round(durationMs * 0.7);
const ratePps = Math.round((load * 2e6) / costUs), sizeBytes = 200;
const loadavgAtStart = fs.readFileSync('/proc/loadavg', 'utf8').trim();
const quietWaitMs = args['quiet-wait'] * 1000;
// --compare "ARGS": a third run, adaptive with these extra flowlb arguments (e.g. other intervals), side by side.
const compareArgs = args.compare !== undefined ? args.compare.split(/\s+/).filter(Boolean) : [];
// --no-static: adaptive runs only (to compare builds of the balancer; the static baseline does not change).
const modes: string[] = [...(args['no-static'] ? [] : ['static']), 'adaptive', ...(compareArgs.length ? [`adaptive ${compareArgs.join(' ')}`] : [])];

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-interference-'));
const cfg = path.join(tmp, 'flowlb.json');
fs.writeFileSync(cfg, JSON.stringify({ handler: path.join(ROOT, 'test/fixtures/burn-handler.js'), handlerOptions: { costUs } }));

interface Phase { name: string; fromMs: number; toMs: number }
const phases: Phase[] = [
  { name: 'before', fromMs: 0, toMs: hogOnMs },
  { name: 'hog', fromMs: hogOnMs, toMs: hogOffMs },
  { name: 'after', fromMs: hogOffMs, toMs: durationMs },
];

interface RunOut {
  quiet: { quiet: boolean; waitedMs: number; busyCores: number } | null; round: number; mode: string; samples: Sample[]; client: ClientResult; clientStartMs: number; hogOnAt: number; hogOffAt: number;
  moves: number; drops: Record<string, number>; phases: unknown[];
  shifts: { shift: string; peakMaxOverMean: number; msToBalanced: number | null; rawPeakMaxOverMean: number; rawMsToBalanced: number | null }[];
}
const runs: RunOut[] = [];
console.log(`interference: ${flows} uniform flows, burn ${costUs} us/packet, ${ratePps} pps (${load} x ${Math.round(2e6 / costUs)} ideal), ` +
  `hog on CPU 0 (with worker 0) from ${hogOnMs / 1000} s to ${hogOffMs / 1000} s of ${seconds} s`);
for (let round = 0; round < rounds; round++) {
  const udpPort = await freeUdpPort();
  const client = await startRttClient({ weights: new Array<number>(flows).fill(1), sizeBytes });
  try {
    for (const mode of modes) {
      const quiet = quietWaitMs > 0 ? await waitForQuiet(quietWaitMs) : null;
      const lb = await startOn(udpPort, ['--config', cfg, '--workers', '2', ...(mode === 'static' ? ['--no-balance'] : mode === 'adaptive' ? [] : compareArgs)]);
      let hog: ChildProcess | null = null;
      try {
        const st = await lb.status();
        pin(st.workers[0].pid, 0);
        pin(st.workers[1].pid, 1);
        await runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 64, ratePps: ratePps * 0.5, durationMs: short ? 1000 : 2000, sizeBytes, procs: 1, drainMs: 300 });
        await waitIdle(lb, 5000);
        const s0 = await lb.status();
        const sampler = new Sampler({ httpPort: lb.httpPort, intervalMs }).start();
        const clientStartMs = sampler.now() + 50;
        const pending = client.run({ port: udpPort, ratePps, durationMs, windowMs: 1000, drainMs: 2000, steadyFromMs: hogOnMs });
        let hogOnAt = NaN, hogOffAt = NaN;
        const timers = [
          setTimeout(() => { hog = startHog(0, hogOffMs - hogOnMs); hogOnAt = sampler.now(); sampler.mark('hog on'); }, clientStartMs + hogOnMs - sampler.now()),
          setTimeout(() => { hog?.kill('SIGKILL'); hogOffAt = sampler.now(); sampler.mark('hog off'); }, clientStartMs + hogOffMs - sampler.now()),
        ];
        const res = await pending;
        timers.forEach(clearTimeout);
        const samples = await sampler.stop();
        const s1 = await lb.status();
        // Phases on the sampler's clock (the client's t=0 is clientStartMs there).
        const ph = phases.map((p) => {
          const from = p.name === 'hog' ? hogOnAt : p.name === 'after' ? hogOffAt : clientStartMs;
          const to = p.name === 'before' ? hogOnAt : p.name === 'hog' ? hogOffAt : clientStartMs + durationMs;
          const w = window(samples, from, to);
          const settled = window(samples, from + (to - from) / 2, to);
          const rttWin = res.windows.filter((x) => x.t * 1000 >= p.fromMs && x.t * 1000 < p.toMs && x.p99Us !== null);
          return {
            phase: p.name, fromS: Math.round((from - clientStartMs) / 100) / 10, toS: Math.round((to - clientStartMs) / 100) / 10,
            bucketsEnd: w.length ? w[w.length - 1]!.workers.map((x) => x.buckets) : [],
            targetShareSettled: [0, 1].map((i) => mean(settled.map((s) => s.workers[i]!.targetShare))),
            ppsSettled: [0, 1].map((i) => Math.round(mean(settled.map((s) => s.workers[i]!.pps)))),
            eluSettled: [0, 1].map((i) => mean(settled.map((s) => s.workers[i]!.elu))),
            procCpuSettled: [0, 1].map((i) => mean(settled.map((s) => s.workers[i]!.procCpu))),
            maxOverMeanEluSettled: mean(settled.map(eluSpread)),
            maxOverMeanEluWorst: Math.max(...w.map(eluSpread).filter(Number.isFinite)),
            rttP99UsMedianOfSeconds: median(rttWin.map((x) => x.p99Us!)),
            rttP99UsWorstSecond: Math.max(...rttWin.map((x) => x.p99Us!)),
          };
        });
        const raw = rawSpreads(samples), rawSpread = (x: Sample): number => raw.get(x) ?? NaN;
        const shifts = [
          { shift: 'hog on', s: timeToBalance(samples, hogOnAt, hogOffAt), r: timeToBalance(samples, hogOnAt, hogOffAt, rawSpread) },
          { shift: 'hog off', s: timeToBalance(samples, hogOffAt, clientStartMs + durationMs), r: timeToBalance(samples, hogOffAt, clientStartMs + durationMs, rawSpread) },
        ].map((x) => ({ shift: x.shift, peakMaxOverMean: x.s.peak, msToBalanced: x.s.ms, rawPeakMaxOverMean: x.r.peak, rawMsToBalanced: x.r.ms }));
        const out: RunOut = {
          quiet, round, mode, samples, client: res, clientStartMs, hogOnAt, hogOffAt, phases: ph, shifts,
          moves: s1.migrations.completed - s0.migrations.completed, drops: diffDrops(sumDrops(s0), sumDrops(s1)),
        };
        runs.push(out);
        console.log(`\nround ${round} ${mode}: sent ${res.sent}, lost ${res.lost}, drops in flowlb ${JSON.stringify(out.drops)}, at the client: ${res.sendErrors} socket errors (failed sends, ICMP unreachable), ${res.clientSocketDrops ?? '?'} replies dropped by its kernel; moves ${out.moves}; RTT p50 ${res.rtt?.p50Us} us, p99 ${res.rtt?.p99Us} us`);
        console.log('  phase  | buckets w0/w1 (end) | target share w0/w1 | pkts/s w0/w1 | ELU w0/w1   | CPU w0/w1   | max/mean ELU (settled, worst) | RTT p99 (median s, worst s)');
        for (const p of ph) {
          const f2 = (a: number[]): string => a.map((x) => x.toFixed(2)).join('/');
          console.log(`  ${p.phase.padEnd(6)} | ${p.bucketsEnd.join('/').padEnd(19)} | ${f2(p.targetShareSettled).padEnd(18)} | ${p.ppsSettled.join('/').padEnd(12)} | ${f2(p.eluSettled).padEnd(11)} | ${f2(p.procCpuSettled).padEnd(11)} | ${p.maxOverMeanEluSettled.toFixed(3)}, ${p.maxOverMeanEluWorst.toFixed(3)}`.padEnd(110) +
            ` | ${(p.rttP99UsMedianOfSeconds / 1000).toFixed(1)} ms, ${(p.rttP99UsWorstSecond / 1000).toFixed(1)} ms`);
        }
        for (const s of shifts) {
          const secs = (ms: number | null): string => ms === null ? 'never (in the phase)' : `${(ms / 1000).toFixed(2)} s`;
          console.log(`  after ${s.shift}: worst max/mean ELU smoothed ${s.peakMaxOverMean.toFixed(3)} / raw ${s.rawPeakMaxOverMean.toFixed(3)}; back to <= ${BALANCED} (for ${SUSTAIN_MS / 1000} s) after ${secs(s.msToBalanced)} smoothed, ${secs(s.rawMsToBalanced)} raw`);
        }
      } finally {
        (hog as ChildProcess | null)?.kill('SIGKILL');
        await killLb(lb);
      }
    }
  } finally {
    await client.close();
  }
}

// Chart (round 0): ELU, share of the packets per worker and client RTT p99 over time, static vs adaptive, with the hog period shaded.
const rows: object[] = [];
for (const r of runs.filter((x) => x.round === 0)) {
  const t = (ms: number): number => (ms - r.clientStartMs) / 1000;
  for (const s of r.samples) {
    if (t(s.tMs) < 0) continue;
    const total = s.workers.reduce((a, w) => a + (Number.isFinite(w.pps) ? w.pps : 0), 0);
    for (const w of s.workers) {
      rows.push({ mode: r.mode, t: t(s.tMs), series: `worker ${w.id}`, value: w.elu, panel: 'elu' });
      if (total > 0) rows.push({ mode: r.mode, t: t(s.tMs), series: `worker ${w.id}`, value: (100 * w.pps) / total, panel: 'share' });
    }
  }
  for (const w of r.client.windows) if (w.p99Us !== null) rows.push({ mode: r.mode, t: w.t + 0.5, series: 'RTT p99', value: w.p99Us / 1000, panel: 'rtt' });
  for (const panel of ['elu', 'share', 'rtt']) rows.push({ mode: r.mode, panel, hog: true, from: t(r.hogOnAt), to: t(r.hogOffAt) });
}
const panel = (name: string, title: string, extra: object = {}): object => ({
  data: { values: rows },
  transform: [{ filter: `datum.panel == '${name}'` }],
  facet: { column: { field: 'mode', type: 'nominal', title: null, sort: ['static', 'adaptive'] } },
  spec: {
    width: 360, height: 150,
    layer: [
      {
        transform: [{ filter: 'datum.hog' }], mark: { type: 'rect', color: '#f2c9c9', opacity: 0.5 },
        encoding: { x: { field: 'from', type: 'quantitative', scale: { domain: [0, seconds + 2], nice: false } }, x2: { field: 'to' } },
      },
      {
        transform: [{ filter: '!datum.hog' }],
        mark: name === 'rtt' ? { type: 'line', point: true, color: '#d62728' } : { type: 'line' },
        encoding: {
          x: { field: 't', type: 'quantitative', title: 'seconds (shaded: hog on CPU 0)', scale: { domain: [0, seconds + 2], nice: false } },
          y: { field: 'value', type: 'quantitative', title, ...extra },
          ...(name === 'rtt' ? {} : { color: { field: 'series', type: 'nominal', title: null } }),
        },
      },
    ],
  },
});
const spec = {
  $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
  title: `Interference: busy loop on worker 0's core, ${ratePps} pps, burn ${costUs} us/packet, 2 workers`,
  background: 'white',
  vconcat: [
    panel('elu', 'worker ELU (smoothed)', { scale: { domain: [0, 1.05] } }),
    panel('share', '% of packets dispatched to', { scale: { domain: [20, 80] } }),
    panel('rtt', 'client RTT p99 / s (ms)', { scale: { type: 'log' } }),
  ],
} as unknown as TopLevelSpec;
const svg = await renderChart(spec, path.join(ROOT, 'results/interference.svg')).catch((err: unknown) => {
  fs.writeFileSync(path.join(ROOT, 'results/interference.vl.json'), JSON.stringify(spec));
  console.log(`chart failed (${(err as Error).message}); spec written to results/interference.vl.json`);
  return null;
});

const adaptive = runs.filter((r) => r.mode === 'adaptive');
const file = writeResult('interference', {
  command: `node dist/bench/interference.js ${process.argv.slice(2).join(' ')}`.trim(),
  costUs, flows, load, ratePps, seconds, hogOnS: hogOnMs / 1000, hogOffS: hogOffMs / 1000, balancedThreshold: BALANCED, sustainMs: SUSTAIN_MS,
  loadavgAtStart, loadavgAtEnd: fs.readFileSync('/proc/loadavg', 'utf8').trim(),
  summary: {
    adaptiveImbalanceMaxOverMeanEluDuringHog: median(adaptive.map((r) => (r.phases[1] as { maxOverMeanEluSettled: number }).maxOverMeanEluSettled)),
    staticImbalanceMaxOverMeanEluDuringHog: median(runs.filter((r) => r.mode === 'static').map((r) => (r.phases[1] as { maxOverMeanEluSettled: number }).maxOverMeanEluSettled)),
    adaptiveSecondsToBalancedAfterHogOn: median(adaptive.map((r) => (r.shifts[0]!.msToBalanced ?? NaN) / 1000)),
    adaptiveSecondsToBalancedAfterHogOff: median(adaptive.map((r) => (r.shifts[1]!.msToBalanced ?? NaN) / 1000)),
  },
  adaptiveMsToBalanced: {
    hogOn: median(adaptive.map((r) => r.shifts[0]!.msToBalanced ?? NaN)),
    hogOff: median(adaptive.map((r) => r.shifts[1]!.msToBalanced ?? NaN)),
  },
  runs: runs.map((r) => ({
    round: r.round, mode: r.mode, quietBefore: r.quiet, moves: r.moves, drops: r.drops, phases: r.phases, shifts: r.shifts,
    hogOnS: (r.hogOnAt - r.clientStartMs) / 1000, hogOffS: (r.hogOffAt - r.clientStartMs) / 1000,
    client: { sent: r.client.sent, received: r.client.received, lost: r.client.lost, sendErrors: r.client.sendErrors, clientSocketDrops: r.client.clientSocketDrops, rtt: r.client.rtt, windows: r.client.windows },
    series: compactSeries(r.samples.map((s) => ({ ...s, tMs: s.tMs - r.clientStartMs }))),
  })),
});
fs.rmSync(tmp, { recursive: true, force: true });
console.log(`\nwritten ${file}${svg ? ` and ${svg}` : ''}`);
