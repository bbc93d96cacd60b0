/**
 * flowlb against established UDP proxies, side by side in one run on one machine with the same client:
 * flowlb's proxy handler (2 workers), nginx's stream UDP proxy (2 workers) and dnsdist, each in front of the
 * same two backends.
 *
 *   DNS:        two nsd servers behind each proxy, load from dnsperf (8 client sockets). Max QPS = the highest
 *               fixed rate (-Q) answered at >= 95% with <= --loss-pct lost, found from a closed-loop estimate
 *               then bisection; latency percentiles from dnsperf -v per-query lines at a fixed moderate rate.
 *   ping-pong:  two `sockperf server`s behind each proxy, `sockperf ping-pong --full-rtt` (one message in
 *               flight: latency, not throughput). dnsdist forwards DNS only, so it sits this one out.
 *
 * A direct run against one backend (no proxy) comes first in each test as the floor: what the client and the
 * backend cost without anything in between. Targets are interleaved per round, so machine noise spreads over
 * all of them. Every peer missing from the machine is skipped with the reason; the benchmark still runs.
 *
 *   node dist/bench/peers.js [--short] [--rounds 3] [--trial-sec 2] [--latency-rate 5000] [--latency-sec 4]
 *                            [--pingpong-sec 4] [--loss-pct 0.5] [--clients 8] [--max-trials 8] [--no-direct]
 *
 * Before each target's test, one idle second measures how many cores the rest of the machine keeps busy
 * (recorded per run as backgroundBusyCores): on a shared machine that is where most of the noise comes from.
 *
 * Writes results/peers.json, results/peers.svg (bars: QPS and p99 by peer) and results/peers-flowlb-cpu.svg
 * (flowlb's primary and workers' CPU over the first round's DNS test).
 */
import os from 'node:os';
import path from 'node:path';
import { barChartSpec, lineChartSpec, renderChart, type BarRow, type LinePoint } from './lib/chart.js';
import {
  backgroundBusyCores, flowlbBuild, makeWorkDir, missingTools, peerSpecs, removeWorkDir, percentile, runDnsperf, runSockperf, startNsd, startSockperfServer, toolVersion,
  type DnsperfResult, type Endpoint, type PlainBackend, type PeerSpec, type Proxy, type SockperfResult,
} from './lib/peers.js';
import { parseBenchArgs } from './lib/args.js';
import { median, ROOT, sleep, writeResult } from './lib/procs.js';
import { Sampler, type Sample } from './lib/sampler.js';

const args = parseBenchArgs('peers', 'flowlb against nginx and dnsdist in front of the same backends: DNS max QPS and latency (nsd, dnsperf), UDP ping-pong RTT (sockperf).', {
  short: { type: 'boolean', describe: 'Short run: 1 round, shorter trials, no direct (no proxy) run' },
  rounds: { type: 'number', default: 3, short: 1, check: 'positive-int', describe: 'Rounds (medians are reported)' },
  'trial-sec': { type: 'number', default: 2, short: 1, check: 'positive', describe: 'Length of each max-QPS trial, s' },
  'max-trials': { type: 'number', default: 8, short: 4, check: 'positive-int', describe: 'Most fixed-rate trials of the max-QPS search' },
  'loss-pct': { type: 'number', default: 0.5, check: 'nonnegative', describe: 'Most queries lost (%) for a trial to pass' },
  clients: { type: 'number', default: 8, check: 'positive-int', describe: 'dnsperf client sockets (-c)' },
  'latency-rate': { type: 'number', default: 5000, check: 'positive', describe: 'Offered rate of the latency run, queries/s' },
  'latency-sec': { type: 'number', default: 4, short: 1.5, check: 'positive', describe: 'Length of the latency run, s' },
  'pingpong-sec': { type: 'number', default: 4, short: 1.5, check: 'positive', describe: 'Length of each ping-pong run, s' },
  'no-direct': { type: 'boolean', describe: 'Leave out the direct (no proxy) run (--short leaves it out too)' },
});
const short = args.short;
const rounds = args.rounds;
const trialSec = args['trial-sec'];
const maxTrials = args['max-trials'];
const lossPct = args['loss-pct'];
const clients = args.clients;
const latencyRate = args['latency-rate'];
const latencySec = args['latency-sec'];
const pingpongSec = args['pingpong-sec'];
const withDirect = !args['no-direct'] && !short;
/** The idle window before each test that measures the rest of the machine's load. */
const BACKGROUND_MS = short ? 500 : 1000;
/** Bisection stops when the passing and failing rates are this close (relative). */
const PRECISION = 0.1;
/** A fixed-rate trial passes when at least this share of the offered rate was answered. */
const MIN_ANSWERED_SHARE = 0.95;

const DIRECT = 'direct (no proxy)';

interface Target {
  readonly name: string;
  readonly label: string;
  start(backends: readonly Endpoint[]): Promise<{ port: number; httpPort?: number; stop(): Promise<void>; extra?(): Promise<unknown> }>;
}

interface MaxQps {
  readonly qps: number;
  readonly closedLoop: { qps: number; lostPct: number };
  readonly trials: { rate: number; qps: number; lostPct: number; pass: boolean }[];
}

/** Highest fixed rate that passes, starting from 0.8x the closed-loop throughput. */
async function findMaxQps(port: number): Promise<MaxQps> {
  const closed = await runDnsperf({ port, seconds: trialSec, clients, outstanding: 100 });
  const trials: MaxQps['trials'] = [];
  let lo = 0, loQps = 0, hi = Infinity;
  let rate = Math.max(1000, closed.qps * 0.8);
  for (let t = 0; t < maxTrials; t++) {
    await sleep(200);
    const r = await runDnsperf({ port, seconds: trialSec, qps: rate, clients });
    const pass = r.lostPct <= lossPct && r.qps >= MIN_ANSWERED_SHARE * rate;
    trials.push({ rate: Math.round(rate), qps: Math.round(r.qps), lostPct: round(r.lostPct, 3), pass });
    if (pass) { lo = rate; loQps = Math.max(loQps, r.qps); } else hi = rate;
    if (lo > 0 && hi < Infinity && hi / lo < 1 + PRECISION) break;
    // No failure yet: grow fast (the closed-loop estimate is low for a proxy whose latency, not CPU, caps it at
    // `outstanding` queries in flight); no pass yet: halve; else bisect.
    rate = lo === 0 ? rate / 2 : hi === Infinity ? rate * 1.5 : (lo + hi) / 2;
  }
  return { qps: Math.round(loQps), closedLoop: { qps: Math.round(closed.qps), lostPct: round(closed.lostPct, 3) }, trials };
}

function latencySummary(r: DnsperfResult): { p50Us: number; p99Us: number; p999Us: number; maxUs: number; avgUs: number; answered: number; lostPct: number } {
  const s = [...(r.latenciesUs ?? [])].sort((a, b) => a - b);
  return {
    p50Us: round(percentile(s, 50), 1), p99Us: round(percentile(s, 99), 1), p999Us: round(percentile(s, 99.9), 1),
    maxUs: round(r.maxLatencyUs, 1), avgUs: round(r.avgLatencyUs, 1), answered: s.length, lostPct: round(r.lostPct, 3),
  };
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

function proxyTargets(specs: PeerSpec[], dns: boolean, dir: string): Target[] {
  return specs.map((s) => ({
    name: s.name, label: s.label,
    start: async (backends) => {
      const p: Proxy = await s.start({ dir, backends, dns });
      return {
        port: p.port, httpPort: p.httpPort, stop: () => p.stop(),
        extra: p.status ? async () => {
          const st = await p.status!();
          return { workers: st.workers.map((w: any) => ({ pid: w.pid, handled: w.handled, restarts: w.restarts, drops: w.drops })), dropped: st.dropped };
        } : undefined,
      };
    },
  }));
}

const started = Date.now();
const loadBefore = os.loadavg();
const specs = peerSpecs();
const skipped: Record<string, string> = {};
for (const s of specs) if (s.unavailable) { skipped[s.name] = s.unavailable; console.log(`skipping ${s.label}: ${s.unavailable}`); }
const available = specs.filter((s) => !s.unavailable);
const dir = makeWorkDir('peers');
console.log(`peers: ${available.map((s) => s.label).join(', ') || 'none'}; ${rounds} round(s); work dir ${dir}`);

// ---------------------------------------------------------------- DNS
interface DnsRun {
  round: number; target: string; maxQps: MaxQps; latency: ReturnType<typeof latencySummary>; backendQueries: (number | null)[];
  /** Cores busy on the machine in the second before the test, with none of the test's processes running. */
  backgroundBusyCores: number;
  extra?: unknown;
}
let flowlbSamples: Sample[] = [];
const dnsRuns: DnsRun[] = [];
const dnsSkipped: string | null = missingTools(['nsd', 'dnsperf']);
if (dnsSkipped) console.log(`skipping the DNS test: ${dnsSkipped}`);
else {
  const nsds = [await startNsd({ dir, identity: 'backend-1' }), await startNsd({ dir, identity: 'backend-2' })];
  const backends = nsds.map((n) => ({ host: '127.0.0.1', port: n.port }));
  const targets: Target[] = [
    ...(withDirect ? [{ name: 'direct', label: DIRECT, start: async () => ({ port: nsds[0]!.port, stop: async () => {} }) }] : []),
    ...proxyTargets(available, true, dir),
  ];
  try {
    for (let r = 0; r < rounds; r++) {
      for (const t of targets) {
        const background = await backgroundBusyCores(BACKGROUND_MS);
        const q0 = nsds.map((n) => n.queries());
        const p = await t.start(backends);
        // flowlb's per-process CPU over the first round's search and latency run, for the line chart.
        const sampler = r === 0 && t.name === 'flowlb' && p.httpPort ? new Sampler({ httpPort: p.httpPort, intervalMs: 500 }).start() : null;
        try {
          await sleep(300);
          const maxQps = await findMaxQps(p.port);
          await sleep(300);
          const lat = latencySummary(await runDnsperf({ port: p.port, seconds: latencySec, qps: latencyRate, clients, verbose: true }));
          if (sampler) flowlbSamples = await sampler.stop();
          const extra = await p.extra?.();
          const q1 = nsds.map((n) => n.queries());
          const backendQueries = q1.map((q, i) => (q === null || q0[i] === null ? null : q - q0[i]!));
          dnsRuns.push({ round: r, target: t.name, maxQps, latency: lat, backendQueries, backgroundBusyCores: background, ...(extra ? { extra } : {}) });
          console.log(`dns round ${r} ${t.label}: max ${maxQps.qps} qps (closed loop ${maxQps.closedLoop.qps}, ${maxQps.closedLoop.lostPct}% lost; ` +
            `${maxQps.trials.length} trials); at ${latencyRate} qps p50 ${lat.p50Us} us p99 ${lat.p99Us} us, lost ${lat.lostPct}%; backends ${backendQueries.join('/')}; ` +
            `${background} cores busy before`);
        } catch (err) {
          console.log(`dns round ${r} ${t.label}: FAILED ${(err as Error).message}`);
          dnsRuns.push({
            round: r, target: t.name, maxQps: { qps: NaN, closedLoop: { qps: NaN, lostPct: NaN }, trials: [] },
            latency: latencySummary({ latenciesUs: [] } as unknown as DnsperfResult), backendQueries: [], backgroundBusyCores: background,
            extra: { error: (err as Error).message },
          });
        } finally {
          if (sampler) await sampler.stop();
          await p.stop();
        }
      }
    }
  } finally {
    for (const n of nsds) await n.stop();
  }
}

// ---------------------------------------------------------------- UDP ping-pong
interface PingRun { round: number; target: string; result: SockperfResult | null; backgroundBusyCores: number; error?: string }
const pingRuns: PingRun[] = [];
const pingSkippedPeers: Record<string, string> = {};
const pingSkipped: string | null = missingTools(['sockperf']);
if (pingSkipped) console.log(`skipping the ping-pong test: ${pingSkipped}`);
else {
  for (const s of available) if (!s.anyUdp) {
    pingSkippedPeers[s.name] = `${s.label} forwards DNS only; sockperf's messages are not DNS`;
    console.log(`ping-pong: skipping ${pingSkippedPeers[s.name]}`);
  }
  const servers: PlainBackend[] = [await startSockperfServer({ dir, name: 'backend-1' }), await startSockperfServer({ dir, name: 'backend-2' })];
  const backends = servers.map((s) => ({ host: '127.0.0.1', port: s.port }));
  const targets: Target[] = [
    ...(withDirect ? [{ name: 'direct', label: DIRECT, start: async () => ({ port: servers[0]!.port, stop: async () => {} }) }] : []),
    ...proxyTargets(available.filter((s) => s.anyUdp), false, dir),
  ];
  try {
    for (let r = 0; r < rounds; r++) {
      for (const t of targets) {
        const background = await backgroundBusyCores(BACKGROUND_MS);
        const p = await t.start(backends);
        try {
          await sleep(300);
          const result = await runSockperf({ port: p.port, seconds: pingpongSec });
          pingRuns.push({ round: r, target: t.name, result, backgroundBusyCores: background });
          console.log(`ping-pong round ${r} ${t.label}: RTT avg ${result.avgUs} us p50 ${result.p50Us} us p99 ${result.p99Us} us ` +
            `(${result.roundTrips} round trips, ${result.dropped} dropped); ${background} cores busy before`);
        } catch (err) {
          pingRuns.push({ round: r, target: t.name, result: null, backgroundBusyCores: background, error: (err as Error).message });
          console.log(`ping-pong round ${r} ${t.label}: FAILED ${(err as Error).message}`);
        } finally {
          await p.stop();
        }
      }
    }
  } finally {
    for (const s of servers) await s.stop();
  }
}

// ---------------------------------------------------------------- summary
const names = [...(withDirect ? ['direct'] : []), ...available.map((s) => s.name)];
const labelOf = (n: string): string => (n === 'direct' ? DIRECT : specs.find((s) => s.name === n)!.label);
const med = (xs: number[]): number => { const f = xs.filter(Number.isFinite); return f.length ? median(f) : NaN; };

const dns: Record<string, { maxQps: number; closedLoopQps: number; p50Us: number; p99Us: number; p999Us: number; lostPctAtLatencyRate: number }> = {};
for (const n of names) {
  const runs = dnsRuns.filter((r) => r.target === n);
  if (runs.length === 0) continue;
  dns[n] = {
    maxQps: med(runs.map((r) => r.maxQps.qps)), closedLoopQps: med(runs.map((r) => r.maxQps.closedLoop.qps)),
    p50Us: med(runs.map((r) => r.latency.p50Us)), p99Us: med(runs.map((r) => r.latency.p99Us)),
    p999Us: med(runs.map((r) => r.latency.p999Us)), lostPctAtLatencyRate: med(runs.map((r) => r.latency.lostPct)),
  };
}
const ping: Record<string, { avgUs: number; p50Us: number; p99Us: number; p999Us: number }> = {};
for (const n of names) {
  const runs = pingRuns.filter((r) => r.target === n && r.result);
  if (runs.length === 0) continue;
  ping[n] = {
    avgUs: med(runs.map((r) => r.result!.avgUs)), p50Us: med(runs.map((r) => r.result!.p50Us)),
    p99Us: med(runs.map((r) => r.result!.p99Us)), p999Us: med(runs.map((r) => r.result!.p999Us)),
  };
}
/** flowlb / peer for every figure: above 1 means flowlb higher (better for QPS, worse for latency). */
const ratios: Record<string, Record<string, number>> = {};
for (const n of names) {
  if (n === 'flowlb') continue;
  const r: Record<string, number> = {};
  if (dns.flowlb && dns[n]) {
    r.dnsMaxQps = round(dns.flowlb.maxQps / dns[n].maxQps, 3);
    r.dnsClosedLoopQps = round(dns.flowlb.closedLoopQps / dns[n].closedLoopQps, 3);
    r.dnsP99 = round(dns.flowlb.p99Us / dns[n].p99Us, 3);
  }
  if (ping.flowlb && ping[n]) {
    r.pingAvg = round(ping.flowlb.avgUs / ping[n].avgUs, 3);
    r.pingP99 = round(ping.flowlb.p99Us / ping[n].p99Us, 3);
  }
  if (Object.keys(r).length) ratios[n] = r;
}

const pad = (s: string, n: number): string => s.padEnd(n);
const fmt = (x: number | undefined, d = 0): string => (x === undefined || !Number.isFinite(x) ? '-' : x.toFixed(d));
console.log(`\nmedians over ${rounds} round(s); ${os.cpus().length} CPUs shared by client, backends and proxy; load average ${loadBefore.map((l) => l.toFixed(1)).join(' ')} at start`);
if (Object.keys(dns).length) {
  console.log(`\nDNS (nsd x2, dnsperf -c ${clients}; max QPS at <= ${lossPct}% lost; latency at ${latencyRate} qps)`);
  console.log(`  ${pad('target', 28)} ${pad('max QPS', 9)} ${pad('closed-loop', 12)} ${pad('p50 us', 8)} ${pad('p99 us', 8)} ${pad('p99.9 us', 9)}`);
  for (const [n, d] of Object.entries(dns)) {
    console.log(`  ${pad(labelOf(n), 28)} ${pad(fmt(d.maxQps), 9)} ${pad(fmt(d.closedLoopQps), 12)} ${pad(fmt(d.p50Us), 8)} ${pad(fmt(d.p99Us), 8)} ${pad(fmt(d.p999Us), 9)}`);
  }
}
if (Object.keys(ping).length) {
  console.log(`\nUDP ping-pong (sockperf --full-rtt, one message in flight; RTT in us)`);
  console.log(`  ${pad('target', 28)} ${pad('avg', 8)} ${pad('p50', 8)} ${pad('p99', 8)} ${pad('p99.9', 8)}`);
  for (const [n, d] of Object.entries(ping)) {
    console.log(`  ${pad(labelOf(n), 28)} ${pad(fmt(d.avgUs, 1), 8)} ${pad(fmt(d.p50Us, 1), 8)} ${pad(fmt(d.p99Us, 1), 8)} ${pad(fmt(d.p999Us, 1), 8)}`);
  }
}
for (const [n, r] of Object.entries(ratios)) {
  console.log(`flowlb / ${labelOf(n)}: ${Object.entries(r).map(([k, v]) => `${k} ${v}`).join(', ')}`);
}

const rows: BarRow[] = [];
for (const [n, d] of Object.entries(dns)) {
  rows.push({ category: n, metric: `DNS max QPS (<= ${lossPct}% lost)`, value: d.maxQps });
  rows.push({ category: n, metric: `DNS p99 at ${latencyRate} qps (us)`, value: d.p99Us });
}
for (const [n, d] of Object.entries(ping)) rows.push({ category: n, metric: 'UDP ping-pong p99 RTT (us)', value: d.p99Us });
const chartTitle = {
  text: `flowlb vs peers: ${os.cpus().length} CPUs shared by client, backends and proxy; medians of ${rounds} round(s)`,
  subtitle: `${available.map((s) => s.label).join(', ')}; DNS: 2 nsd, dnsperf -c ${clients}; ping-pong: 2 sockperf servers, sockperf --full-rtt`,
};
const svg = rows.length ? await renderChart(barChartSpec(chartTitle, rows), path.join(ROOT, 'results/peers.svg')) : null;
let cpuSvg: string | null = null;
if (flowlbSamples.length > 1) {
  const points: LinePoint[] = [];
  for (const smp of flowlbSamples) {
    if (!Number.isFinite(smp.flowlbCpu)) continue;
    const x = round(smp.tMs / 1000, 2);
    const workersCpu = smp.workers.reduce((a, w) => a + w.procCpu, 0);
    points.push({ x, y: round(smp.flowlbCpu - workersCpu, 3), series: 'primary' });
    for (const w of smp.workers) points.push({ x, y: round(w.procCpu, 3), series: `worker ${w.id}` });
    points.push({ x, y: round(smp.machineBusy, 3), series: 'whole machine' });
  }
  cpuSvg = await renderChart(lineChartSpec(
    { text: 'flowlb during the DNS test (round 0): max-QPS search, then the latency run', subtitle: 'CPU per process from /proc, sampled every 500 ms; "whole machine" counts every process, ours and others\'' },
    points, { x: 'seconds', y: 'CPU (cores)' },
  ), path.join(ROOT, 'results/peers-flowlb-cpu.svg'));
}

const file = writeResult('peers', {
  short, rounds, trialSec, maxTrials, lossPct, clients, latencyRate, latencySec, pingpongSec, minAnsweredShare: MIN_ANSWERED_SHARE,
  flowlb: flowlbBuild(),
  machine: { cpus: os.cpus().length, node: process.version, loadAvgBefore: loadBefore, loadAvgAfter: os.loadavg() },
  tools: {
    nginx: toolVersion('nginx', ['-v'], /nginx\/(\S+)/), dnsdist: toolVersion('dnsdist', ['--version'], /dnsdist (\S+)/),
    nsd: toolVersion('nsd', ['-v'], /NSD (?:version )?(\S+)/i), dnsperf: toolVersion('dnsperf', ['-h'], /Version (\S+)/),
    sockperf: toolVersion('sockperf', ['--version'], /version #?(\S+)/i),
  },
  skipped: { peers: skipped, dnsTest: dnsSkipped, pingpongTest: pingSkipped, pingpongPeers: pingSkippedPeers },
  dns, pingpong: ping, ratiosFlowlbOverPeer: ratios,
  runs: { dns: dnsRuns, pingpong: pingRuns },
  flowlbCpuSeries: flowlbSamples.map((x) => ({
    t: round(x.tMs / 1000, 2), machineBusy: x.machineBusy, flowlbCpu: x.flowlbCpu,
    workers: x.workers.map((w) => ({ id: w.id, procCpu: w.procCpu, cpuUtil: w.cpuUtil, buckets: w.buckets, pps: w.pps })),
  })),
  elapsedSec: Math.round((Date.now() - started) / 1000),
});
removeWorkDir(dir);
console.log(`written ${file}${svg ? `, ${svg}` : ''}${cpuSvg ? `, ${cpuSvg}` : ''} in ${Math.round((Date.now() - started) / 1000)} s`);
