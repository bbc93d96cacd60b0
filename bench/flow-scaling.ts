/**
 * Flow scaling: what 1k, 10k, 100k and 1M flows cost flowlb (2 workers, echo handler, static hashing), in
 * memory and in CPU per packet, and what it delivers at saturation.
 *
 * How the flows are made:
 *  - Active flows (traffic on every flow, for CPU and throughput): the generator, one socket per flow, so
 *    100k flows need 8 sender processes (open-file limit) over 8 source addresses (ephemeral ports). 1M
 *    sockets would need 50+ processes and several GB on this 2-core machine, so 1M flows are not driven
 *    actively (see below).
 *  - Idle flows (memory, and the 1M case): a populator (this file with --populate, 1 to 4 processes) binds a
 *    socket to an explicit 127.1.x.y:port, sends one datagram, closes it, and moves on: one packet per flow,
 *    every 4-tuple distinct, at a paced rate. The flows then sit idle in the workers' flow tables (idle
 *    timeout raised to 10 minutes so nothing expires during the measurement).
 *
 * Figures, per flow count N:
 *  - memory: (workers' RSS after populating N idle flows - before) / (flows added), from /status rssBytes;
 *    and the preallocated flow-table memory per slot of --max-flows (RSS at start with --max-flows M minus
 *    with --max-flows 1024, over M), which every flowlb pays whether the slots are used or not.
 *  - CPU per packet: flowlb's primary and workers CPU (/proc) over the packets handled, at a fixed offered
 *    rate, split into the window in which the flows are created (each flow's first packet) and the steady
 *    window after it.
 *  - throughput (full run only): replies flowlb sent per second in the steady window while the generator
 *    offers more than it can take. The generator (8 processes) shares the 2 cores, so this is the
 *    machine's figure, not flowlb's alone; compare it with the CPU per packet.
 *  - 1M: populated idle, then the CPU per packet of a 1k-flow active run with the 1M flows in the table,
 *    against the same run on a table with nothing else in it.
 *
 * Native section (--native: after the above; --native-only: alone, merged into the existing result file as
 * `native`): 1k, 100k and 1M ACTIVE flows from bench/native/flowgen.c, one socket whose datagrams carry
 * IP_PKTINFO source addresses 127.64.x.y, so every flow is a distinct 4-tuple without a socket of its own.
 * Per N, on a fresh flowlb: a warm-up pass (one packet per flow, paced, repeated for flows without a reply)
 * so all N flows are in the tables; workers' RSS per flow right after it; then, from the same source ports
 * (the same N flows), round robin over all flows: CPU per packet at --rate (not saturated), and replies/s
 * at --native-sat-rate offered (saturated) in a steady window long enough for every flow to get a packet
 * in it. --native-rounds rounds in alternating order; medians per flow count.
 * Plus the generator's own ceilings: flowgen at full speed into a C sink that only counts, and against a
 * C echo (round trip), with 1M flows, so a flowlb figure is never the generator's.
 *
 *   node dist/bench/flow-scaling.js [--short] [--rate 20000] [--sat-rate 80000] [--max-flows 600000]
 *                                   [--populate-rate 12000] [--no-1m] [--native | --native-only]
 *                                   [--native-flows 1000,100000,1000000] [--native-rounds 2]
 *                                   [--native-sat-rate 120000] [--warmup-rate 30000]
 * Writes results/flow-scaling.json.
 */
import { fork } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { runGenerator, type GenResult } from '../src/gen/run.js';
import { parseBenchArgs } from './lib/args.js';
import { buildFlowgen, runFlowgen, startFlowgenServer } from './lib/native.js';
import { ROOT, cpuSeconds, median, sleep, startFlowlb, writeResult, type Flowlb } from './lib/procs.js';
import path from 'node:path';
import { waitForQuiet } from './lib/sampler.js';

const HERE = fileURLToPath(import.meta.url);
/** Populator address space: 127.1.A.B, ports PORT_BASE .. PORT_BASE + PORTS - 1. */
const PORT_BASE = 10_000, PORTS = 50_000;

// ---------------------------------------------------------------------------------------------------
// Populator child: flows [from, from + count), one datagram each, at most `ratePps`, `inFlight` at once.

async function populateMain(): Promise<void> {
  const [from, count, port, ratePps] = process.argv.slice(process.argv.indexOf('--populate') + 1).map(Number) as [number, number, number, number];
  const inFlight = 64;
  const payload = Buffer.alloc(64);
  let next = from, ok = 0, failed = 0;
  const end = from + count;
  const t0 = performance.now();
  const one = (i: number): Promise<void> => new Promise((resolve) => {
    const a = Math.floor(i / PORTS);
    const address = `127.1.${(a >> 8) & 255}.${(a & 255) + 1}`;
    const s = dgram.createSocket('udp4');
    const done = (good: boolean): void => { if (good) ok++; else failed++; try { s.close(); } catch { /* closed */ } resolve(); };
    s.once('error', () => done(false));
    s.bind({ address, port: PORT_BASE + (i % PORTS), exclusive: true }, () => {
      s.send(payload, port, '127.0.0.1', (err) => done(!err));
    });
  });
  const lane = async (): Promise<void> => {
    while (next < end) {
      const i = next++;
      // Paced: flow k of this process goes out no earlier than k / ratePps seconds after the start.
      const due = ((i - from) / ratePps) * 1000 - (performance.now() - t0);
      if (due > 1) await sleep(due);
      await one(i);
    }
  };
  await Promise.all(Array.from({ length: inFlight }, lane));
  process.send!({ ok, failed, ms: performance.now() - t0 });
  process.disconnect();
}

/** Populates flows [first, first + n) (populator numbering), in 1 to 4 processes. */
async function populate(port: number, first: number, n: number, ratePps: number): Promise<{ ok: number; failed: number; ms: number }> {
  const procs = n >= 50_000 ? 4 : 1;
  const per = Math.ceil(n / procs);
  const parts = await Promise.all(Array.from({ length: procs }, (_, k) => new Promise<{ ok: number; failed: number; ms: number }>((resolve, reject) => {
    const from = first + k * per, count = Math.min(per, first + n - from);
    const child = fork(HERE, ['--populate', String(from), String(count), String(port), String(ratePps / procs)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const limit = setTimeout(() => { child.kill('SIGKILL'); reject(new Error('populator timed out')); }, (count / (ratePps / procs)) * 1000 * 3 + 30_000);
    child.once('message', (m) => { clearTimeout(limit); resolve(m as { ok: number; failed: number; ms: number }); });
    child.once('exit', (c) => { if (c) { clearTimeout(limit); reject(new Error(`populator exited ${c}`)); } });
  })));
  return { ok: parts.reduce((a, p) => a + p.ok, 0), failed: parts.reduce((a, p) => a + p.failed, 0), ms: Math.max(...parts.map((p) => p.ms)) };
}

// ---------------------------------------------------------------------------------------------------
// The benchmark.

interface Snap { machineBusy: number; softirq: number; dropped: Record<string, number>; workerDrops: Record<string, number>[]; flows: number; workerRss: number; primaryRss: number; handled: number; replies: number; received: number; cpuPrimary: number; cpuWorkers: number; t: number }

function rssOf(pid: number): number {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch { return NaN; }
}

/** CPU seconds the whole machine has been busy (all cores, /proc/stat, not idle or iowait), and of that softirq. */
function machineBusySeconds(): [number, number] {
  try {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
    return [(f.slice(0, 8).reduce((a, b) => a + b, 0) - f[3]! - f[4]!) / 100, f[6]! / 100];
  } catch { return [NaN, NaN]; }
}

async function snap(lb: Flowlb): Promise<Snap> {
  const [machineBusy, softirq] = machineBusySeconds();
  const st = await lb.status();
  const ws = st.workers as { pid: number; flowsActive: number; rssBytes: number; handled: number; replies: number }[];
  return {
    machineBusy, softirq, dropped: st.dropped, workerDrops: (st.workers as { drops: Record<string, number> }[]).map((w) => w.drops),
    flows: ws.reduce((a, w) => a + w.flowsActive, 0), workerRss: ws.reduce((a, w) => a + w.rssBytes, 0), primaryRss: rssOf(st.pid),
    handled: ws.reduce((a, w) => a + w.handled, 0), replies: ws.reduce((a, w) => a + w.replies, 0), received: st.received,
    cpuPrimary: cpuSeconds(st.pid), cpuWorkers: ws.reduce((a, w) => a + cpuSeconds(w.pid), 0), t: performance.now(),
  };
}

/** Worker reports come every 200 ms: wait for two so /status reflects what just happened. */
const settle = (ms = 1500): Promise<void> => sleep(ms);

/**
 * Static hashing: this benchmark measures what flows cost, not balancing, and a bucket migration in the
 * middle of populating (a bucket holds ~1000 flows at 1M) would move state around while it is measured.
 */
function lbArgs(maxFlows: number): string[] {
  return ['--workers', '2', '--max-flows', String(maxFlows), '--idle-timeout', '10m', '--no-balance'];
}

async function warmUp(lb: Flowlb): Promise<void> {
  await runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 200, ratePps: 5000, durationMs: 1000, sizeBytes: 64, drainMs: 300 });
}

/** Generator process layout for N active flows: same for every N so the generator's own cost is comparable. */
function genLayout(n: number): { procs: number; srcAddrs: number } {
  return { procs: Math.min(8, n), srcAddrs: 8 };
}

interface Window { fromSnap: Snap; toSnap: Snap }
function perPacket(w: Window): { primaryUs: number; workersUs: number; totalUs: number; packets: number; seconds: number; repliesPerSec: number; machineBusyCores: number; softirqCores: number; flowlbCores: number } {
  const packets = w.toSnap.handled - w.fromSnap.handled;
  const primaryUs = ((w.toSnap.cpuPrimary - w.fromSnap.cpuPrimary) * 1e6) / packets;
  const workersUs = ((w.toSnap.cpuWorkers - w.fromSnap.cpuWorkers) * 1e6) / packets;
  const seconds = (w.toSnap.t - w.fromSnap.t) / 1000;
  return {
    primaryUs, workersUs, totalUs: primaryUs + workersUs, packets, seconds, repliesPerSec: (w.toSnap.replies - w.fromSnap.replies) / seconds,
    machineBusyCores: (w.toSnap.machineBusy - w.fromSnap.machineBusy) / seconds,
    softirqCores: (w.toSnap.softirq - w.fromSnap.softirq) / seconds,
    flowlbCores: (w.toSnap.cpuPrimary - w.fromSnap.cpuPrimary + w.toSnap.cpuWorkers - w.fromSnap.cpuWorkers) / seconds,
  };
}

/**
 * One generator run of N flows at `ratePps`, with snapshots at the start of sending, once every flow has had
 * its first packet, and shortly before the end: the creation window and the steady window.
 */
async function activeRun(lb: Flowlb, n: number, ratePps: number, steadyMs: number): Promise<{ gen: GenResult; creation: ReturnType<typeof perPacket> | null; steady: ReturnType<typeof perPacket> | null }> {
  const creationMs = (n / ratePps) * 1000;
  const durationMs = creationMs + 500 + steadyMs;
  let s0: Promise<Snap> | null = null, s1: Promise<Snap> | null = null, s2: Promise<Snap> | null = null;
  const gen = await runGenerator({
    target: { host: '127.0.0.1', port: lb.port }, flows: n, ratePps, durationMs, sizeBytes: 64, ...genLayout(n),
    socketBufferBytes: 1 << 20, drainMs: 1000, progressIntervalMs: 100,
    onProgress: (p) => {
      if (s0 === null && p.sent > 0) s0 = snap(lb);
      if (s1 === null && p.sent >= n * 1.05 + ratePps * 0.3) s1 = snap(lb);
      if (s2 === null && p.elapsedMs >= durationMs - 300) s2 = snap(lb);
    },
  });
  const [a, b, c] = await Promise.all([s0, s1, s2]);
  return {
    gen,
    creation: a && b ? perPacket({ fromSnap: a, toSnap: b }) : null,
    steady: b && c ? perPacket({ fromSnap: b, toSnap: c }) : null,
  };
}


// ---------------------------------------------------------------------------------------------------
// Native section: N active flows from one socket (bench/native/flowgen.c).

interface NativeOpts { flows: number[]; rounds: number; rate: number; satRate: number; maxFlows: number; warmupRate: number; steadyMs: number; quiet: () => Promise<unknown> }

/** The generator alone: full speed into a counting sink, and round trips against an echo, 1M flows, 3 s each. */
async function generatorCeiling(bin: string): Promise<Record<string, unknown>> {
  const out: Record<string, unknown> = {};
  for (const mode of ['sink', 'echo'] as const) {
    const srv = await startFlowgenServer(bin, mode, 5);
    const g = await runFlowgen(bin, { target: { host: '127.0.0.1', port: srv.port }, flows: 1_000_000, ratePps: 0, durationS: 3, drainMs: 200 });
    const s = await srv.result;
    out[mode] = {
      flows: g.flows, sentPps: g.sentPps, receivedPps: mode === 'echo' ? g.receivedPps : null, serverPps: s.pps,
      generatorCpuUsPerPacket: (g.cpuSeconds.measure * 1e6) / g.sent, serverCpuUsPerPacket: (s.cpuSeconds * 1e6) / Math.max(1, s.packets),
    };
    console.log(`generator ceiling, 1M flows, full speed into a C ${mode}: sent ${Math.round(g.sentPps)} pps` +
      (mode === 'echo' ? `, ${Math.round(g.receivedPps)} replies/s back` : `, the sink counted ${Math.round(s.pps)} pps`) +
      ` (generator ${((g.cpuSeconds.measure * 1e6) / g.sent).toFixed(2)} us CPU/packet)`);
  }
  return out;
}

async function nativeSection(o: NativeOpts): Promise<Record<string, unknown>> {
  const build = buildFlowgen();
  if (!build.ok) {
    console.log(`native section ${build.reason}`);
    return { skipped: build.reason };
  }
  const bin = build.path;
  const res: Record<string, unknown> = { generator: 'bench/native/flowgen.c', offeredPps: o.rate, satRate: o.satRate, warmupRate: o.warmupRate };
  res.quietBeforeCeiling = await o.quiet();
  res.ceiling = await generatorCeiling(bin);
  const rows: Record<string, unknown>[] = [];
  // Rounds alternate the order (1k..1M, then 1M..1k) so a busy spell on the shared machine does not always
  // land on the same flow count; the summary takes medians per flow count.
  const order = Array.from({ length: o.rounds }, (_, r) => (r % 2 ? [...o.flows].reverse() : o.flows).map((n) => ({ n, round: r }))).flat();
  for (const { n, round } of order) {
    const row: Record<string, unknown> = { flows: n, round, quietBefore: await o.quiet() };
    const lb = await startFlowlb(lbArgs(o.maxFlows));
    try {
      const target = { host: '127.0.0.1', port: lb.port };
      // Warm flowlb up first (JIT, buffers: 200 flows for 1 s), so the RSS and CPU below are the flows' own.
      await runFlowgen(bin, { target, flows: 200, ratePps: 5000, durationS: 1, drainMs: 300 });
      await settle(1200);
      const base = await snap(lb);
      // Run 1: warm-up (all N flows into the tables, then 1.5 s idle: the RSS snapshot), then a fixed rate,
      // round robin: CPU per packet.
      const steadyS = o.steadyMs / 1000;
      let afterWarm: Promise<Snap> | null = null, w0: Promise<Snap> | null = null, w1: Promise<Snap> | null = null;
      const windowed = (lead: number, len: number) => (e: { event: string }): void => {
        if (e.event === 'warmup-done') setTimeout(() => { afterWarm = snap(lb); }, 1200);
        if (e.event !== 'measure') return;
        setTimeout(() => { w0 = snap(lb); }, lead);
        setTimeout(() => { w1 = snap(lb); }, lead + len);
      };
      const fixed = await runFlowgen(bin, {
        target, flows: n, ratePps: o.rate, durationS: 0.5 + steadyS + 0.7, warmup: true, warmupRatePps: o.warmupRate, warmupPasses: 5, warmupPauseMs: 1500, drainMs: 1000,
        onEvent: windowed(500, o.steadyMs),
      });
      const [aw, f0, f1] = await Promise.all([afterWarm!, w0!, w1!]);
      const flowsAdded = aw.flows - base.flows;
      row.baseFlows = base.flows;
      row.warmup = { ...fixed.warmup, flowsInTables: aw.flows, drops: { primary: aw.dropped, workers: aw.workerDrops } };
      row.memory = { workerRssBeforeBytes: base.workerRss, workerRssAfterWarmupBytes: aw.workerRss, bytesPerFlow: (aw.workerRss - base.workerRss) / flowsAdded, primaryRssDeltaBytes: aw.primaryRss - base.primaryRss };
      const fx = perPacket({ fromSnap: f0, toSnap: f1 });
      // Cores busy with anything but flowlb and the generator during the window: the other users of this machine.
      // (Softirq, where loopback delivery runs, is reported apart but not subtracted: its ticks are charged to
      // the processes it interrupted as well, so subtracting it counted them twice: -0.2 cores on a quiet machine.)
      const othersFixed = fx.machineBusyCores - fx.flowlbCores - fixed.cpuSeconds.measure / fixed.seconds;
      row.fixed = { othersCores: othersFixed, offeredPps: o.rate, sentPps: fixed.sentPps, lossPct: fixed.lossPct, reordered: fixed.reordered, rttNs: fixed.rttNs, steady: fx, generatorCpuUsPerPacket: (fixed.cpuSeconds.measure * 1e6) / fixed.sent };
      console.log(`native ${String(n).padStart(7)} flows: warm-up ${fixed.warmup.sent} packets in ${fixed.warmup.passes} pass(es), ${fixed.warmup.seconds.toFixed(1)} s, ${aw.flows} flows in the tables; ` +
        `workers' RSS +${((aw.workerRss - base.workerRss) / 2 ** 20).toFixed(1)} MiB = ${(row.memory as { bytesPerFlow: number }).bytesPerFlow.toFixed(0)} bytes/flow`);
      console.log(`   at ${o.rate} pps: CPU ${fx.totalUs.toFixed(2)} us/packet (primary ${fx.primaryUs.toFixed(2)}, workers ${fx.workersUs.toFixed(2)}), loss ${fixed.lossPct.toFixed(3)}%, RTT p50 ${(fixed.rttNs.p50 / 1000).toFixed(0)} us p99 ${(fixed.rttNs.p99 / 1000).toFixed(0)} us`);

      // Run 2: the same flows (same source port, so the same 4-tuples; no warm-up), saturated. The window is
      // long enough for every flow to get a packet in it (N / offered rate).
      const satWindowMs = Math.max(o.steadyMs, Math.ceil((n / o.satRate) * 1000 * 1.05));
      w0 = null; w1 = null;
      const sat = await runFlowgen(bin, {
        target, flows: n, ratePps: o.satRate, durationS: (1000 + satWindowMs + 700) / 1000, drainMs: 1000, portBase: fixed.ports[0],
        onEvent: windowed(1000, satWindowMs),
      });
      const [s0, s1] = await Promise.all([w0!, w1!]);
      const st = perPacket({ fromSnap: s0, toSnap: s1 });
      // Saturated: flowlb replied to clearly less than the generator sent (the rest it could not take).
      const saturated = st.repliesPerSec < 0.9 * sat.sentPps;
      const sentBelowOffered = sat.sentPps < 0.97 * o.satRate;
      const othersSat = st.machineBusyCores - st.flowlbCores - sat.cpuSeconds.measure / sat.seconds;
      row.saturated = {
        othersCores: othersSat, offeredPps: o.satRate, sentPps: sat.sentPps, generatorReceivedPps: sat.receivedPps, lossPct: sat.lossPct, reordered: sat.reordered,
        windowMs: satWindowMs, steady: st, flowsInTables: s1.flows, saturated, sentBelowOffered,
        generatorCpuUsPerPacket: (sat.cpuSeconds.measure * 1e6) / sat.sent, drops: { primary: s1.dropped, workers: s1.workerDrops },
      };
      console.log(`   offered ${o.satRate} pps (sent ${Math.round(sat.sentPps)}${sentBelowOffered ? ': the generator fell behind its schedule, CPU shared with flowlb' : ''}): ${Math.round(st.repliesPerSec)} replies/s over ${(satWindowMs / 1000).toFixed(1)} s${saturated ? '' : ' (NOT saturated: flowlb took nearly all)'}, ` +
        `CPU ${st.totalUs.toFixed(2)} us/packet, ${s1.flows} flows in the tables; softirq ${st.softirqCores.toFixed(2)} cores, other users of the machine ${othersSat.toFixed(2)} cores`);
    } finally { await lb.stop(); }
    rows.push(row);
  }
  const get = (n: number, f: (r: Record<string, any>) => number): number => median(rows.filter((x) => x.flows === n).map((r) => f(r)));
  const all = (n: number, f: (r: Record<string, any>) => unknown): unknown[] => rows.filter((x) => x.flows === n).map((r) => f(r));
  const big = o.flows[o.flows.length - 1]!;
  res.rows = rows;
  res.summary = {
    largest: big, rounds: o.rounds, statistic: o.rounds > 1 ? 'median over rounds' : 'one round',
    repliesPerSec: Object.fromEntries(o.flows.map((n) => [String(n), get(n, (r) => r.saturated.steady.repliesPerSec)])),
    repliesPerSecEachRound: Object.fromEntries(o.flows.map((n) => [String(n), all(n, (r) => Math.round(r.saturated.steady.repliesPerSec))])),
    saturatedEachRound: Object.fromEntries(o.flows.map((n) => [String(n), all(n, (r) => r.saturated.saturated)])),
    othersCoresEachRound: Object.fromEntries(o.flows.map((n) => [String(n), all(n, (r) => Number(r.saturated.othersCores.toFixed(2)))])),
    throughputRatioLargestTo1k: get(big, (r) => r.saturated.steady.repliesPerSec) / get(1000, (r) => r.saturated.steady.repliesPerSec),
    // The same over the rounds in which the rest of the machine used < 0.3 cores during the saturated window.
    quietRepliesPerSec: Object.fromEntries(o.flows.map((n) => [String(n), median(rows.filter((x) => x.flows === n && (x as any).saturated.othersCores < 0.3).map((r) => (r as any).saturated.steady.repliesPerSec))])),
    cpuUsPerPacket: Object.fromEntries(o.flows.map((n) => [String(n), get(n, (r) => r.fixed.steady.totalUs)])),
    cpuUsPerPacketSaturated: Object.fromEntries(o.flows.map((n) => [String(n), get(n, (r) => r.saturated.steady.totalUs)])),
    cpuRatioLargestTo1k: get(big, (r) => r.fixed.steady.totalUs) / get(1000, (r) => r.fixed.steady.totalUs),
    // flowlb's own CPU per handled packet at saturation: less exposed to the machine's other users than replies/s.
    cpuSaturatedRatioLargestTo1k: get(big, (r) => r.saturated.steady.totalUs) / get(1000, (r) => r.saturated.steady.totalUs),
    bytesPerFlow: Object.fromEntries(o.flows.map((n) => [String(n), get(n, (r) => r.memory.bytesPerFlow)])),
  };
  const sm = res.summary as { throughputRatioLargestTo1k: number; cpuRatioLargestTo1k: number; cpuSaturatedRatioLargestTo1k: number };
  const q = (res.summary as { quietRepliesPerSec: Record<string, number> }).quietRepliesPerSec;
  console.log(`native: saturated replies/s at ${big} flows / at 1k: ${sm.throughputRatioLargestTo1k.toFixed(2)} (target >= 0.8); CPU per packet ${sm.cpuRatioLargestTo1k.toFixed(2)}x at ${o.rate} pps, ${sm.cpuSaturatedRatioLargestTo1k.toFixed(2)}x saturated; ` +
    (Number.isFinite(q[String(big)]! / q['1000']!)
      ? `rounds with the rest of the machine < 0.3 cores busy: ${Object.entries(q).map(([k, v]) => `${k}: ${Math.round(v)}`).join(', ')} replies/s (ratio ${(q[String(big)]! / q['1000']!).toFixed(2)})`
      : 'no round with the rest of the machine < 0.3 cores busy at both ends: the ratio above is a busy machine\'s'));
  return res;
}

const OPTIONS = {
  short: { type: 'boolean', describe: 'Short run: 1k and 10k active flows, up to 50k idle, no saturation runs, no quiet wait' },
  rate: { type: 'number', default: 20_000, short: 10_000, check: 'positive', describe: 'Offered rate of the fixed-rate (CPU per packet) runs, packets/s' },
  'sat-rate': { type: 'number', default: 80_000, check: 'positive', describe: 'Offered rate of the saturation runs, packets/s' },
  'max-flows': { type: 'number', default: 600_000, check: 'positive-int', describe: 'flowlb --max-flows (flow slots per worker)' },
  'populate-rate': { type: 'number', default: 12_000, check: 'positive', describe: 'Rate idle flows are created at, flows/s' },
  'quiet-wait': { type: 'number', check: 'nonnegative', describe: 'Wait at most this long for the machine to be idle before each measurement, s (0: no wait)', defaultDescription: '90; 30 with --native-only; 0 with --short' },
  'no-1m': { type: 'boolean', describe: 'Leave out the 1M idle flows step (--short leaves it out too)' },
  native: { type: 'boolean', describe: 'Add the native section (C generator, active flows from one socket) after the rest' },
  'native-only': { type: 'boolean', describe: 'Only the native section, merged into the existing results/flow-scaling.json' },
  'native-flows': { type: 'list', check: 'positive-int', describe: 'Native section: active flow counts, comma-separated', defaultDescription: '1000,100000,1000000; 1000,100000 with --short' },
  'native-rounds': { type: 'number', default: 2, short: 1, check: 'positive-int', describe: 'Native section: rounds (medians are reported)' },
  'native-sat-rate': { type: 'number', default: 120_000, check: 'positive', describe: 'Native section: offered rate of the saturated runs, packets/s' },
  'warmup-rate': { type: 'number', default: 30_000, check: 'positive', describe: 'Native section: rate of the warm-up pass, packets/s' },
} as const;

async function main(): Promise<void> {
  const args = parseBenchArgs('flow-scaling', 'Flow scaling: memory and CPU per packet of flowlb with 1k to 1M flows (idle and active), and throughput at saturation.', OPTIONS);
  const short = args.short;
  const rate = args.rate, satRate = args['sat-rate'], maxFlows = args['max-flows'];
  const populateRate = args['populate-rate'], steadyMs = short ? 2000 : 6000;
  const counts = short ? [1_000, 10_000] : [1_000, 10_000, 100_000];
  const with1M = !short && !args['no-1m'];
  const loadavgAtStart = fs.readFileSync('/proc/loadavg', 'utf8').trim();
  const nativeOnly = args['native-only'];
  const quietWaitMs = (args['quiet-wait'] ?? (short ? 0 : nativeOnly ? 30 : 90)) * 1000;
  const quiet = async (): Promise<unknown> => (quietWaitMs > 0 ? waitForQuiet(quietWaitMs) : null);
  const out: Record<string, unknown> = {};
  const nativeOpts = (): NativeOpts => {
    const flows = args['native-flows'] ?? (short ? [1_000, 100_000] : [1_000, 100_000, 1_000_000]);
    return { flows, rounds: args['native-rounds'], rate, satRate: args['native-sat-rate'], maxFlows: Math.max(maxFlows, Math.ceil((Math.max(...flows) / 2) * 1.2)), warmupRate: args['warmup-rate'], steadyMs: short ? 2000 : 4000, quiet };
  };
  if (nativeOnly) {
    // Alone: the other sections' figures stay as they are in the result file; `native` is replaced.
    const native = await nativeSection(nativeOpts());
    const file = path.join(ROOT, 'results/flow-scaling.json');
    let prev: Record<string, unknown> = {};
    try { prev = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>; } catch { /* none yet */ }
    writeResult('flow-scaling', { ...prev, native: { command: `node dist/bench/flow-scaling.js ${process.argv.slice(2).join(' ')}`.trim(), loadavgAtStart, loadavgAtEnd: fs.readFileSync('/proc/loadavg', 'utf8').trim(), ...native } });
    console.log(`written ${file} (native section)`);
    return;
  }

  // Preallocation: RSS at start with --max-flows maxFlows against 1024.
  const startRss = async (m: number): Promise<number> => {
    const lb = await startFlowlb(lbArgs(m));
    try { await settle(1200); return (await snap(lb)).workerRss; } finally { await lb.stop(); }
  };
  const rssSmall = await startRss(1024), rssLarge = await startRss(maxFlows);
  const preallocPerSlot = (rssLarge - rssSmall) / (2 * (maxFlows - 1024));
  console.log(`preallocated per flow slot: ${preallocPerSlot.toFixed(0)} bytes (2 workers' RSS at start: ${(rssSmall / 2 ** 20).toFixed(1)} MiB with --max-flows 1024, ${(rssLarge / 2 ** 20).toFixed(1)} MiB with --max-flows ${maxFlows})`);
  out.prealloc = { maxFlows, rssSmallBytes: rssSmall, rssLargeBytes: rssLarge, bytesPerSlot: preallocPerSlot };

  // Memory: one flowlb, idle flows added in steps; RSS after each step.
  const ladder = short ? [1_000, 10_000, 50_000] : with1M ? [1_000, 10_000, 100_000, 1_000_000] : [1_000, 10_000, 100_000];
  const memory: Record<string, unknown>[] = [];
  {
    out.quietBeforeMemory = await quiet();
    const lb = await startFlowlb(lbArgs(maxFlows));
    try {
      await warmUp(lb);
      await settle();
      const base = await snap(lb);
      let prev = base, made = 0;
      for (const n of ladder) {
        const pop = await populate(lb.port, made, n - made, populateRate);
        made = n;
        await settle(2500);
        const cur = await snap(lb);
        const flows = cur.flows - base.flows;
        const step = {
          target: n, flowsInTables: flows, bindsFailed: pop.failed, populateSeconds: pop.ms / 1000,
          // Datagrams the populator sent that the primary never read were lost in the kernel (its socket buffer).
          primaryReceived: cur.received - prev.received, sent: pop.ok,
          workerRssDeltaBytes: cur.workerRss - base.workerRss, bytesPerIdleFlow: (cur.workerRss - base.workerRss) / flows,
          marginalBytesPerFlow: (cur.workerRss - prev.workerRss) / (cur.flows - prev.flows),
          primaryRssDeltaBytes: cur.primaryRss - base.primaryRss,
          drops: { primary: cur.dropped, workers: cur.workerDrops },
        };
        memory.push(step);
        prev = cur;
        console.log(`${String(n).padStart(7)} idle flows: ${flows} in the tables (${pop.ok} sent, ${step.primaryReceived} read by the primary, ${pop.failed} binds failed, ${(pop.ms / 1000).toFixed(1)} s); workers' RSS +${(step.workerRssDeltaBytes / 2 ** 20).toFixed(1)} MiB = ` +
          `${step.bytesPerIdleFlow.toFixed(0)} bytes/flow, ${step.marginalBytesPerFlow.toFixed(0)} bytes/flow for this step's flows; primary RSS ${(step.primaryRssDeltaBytes / 2 ** 20 >= 0 ? '+' : '')}${(step.primaryRssDeltaBytes / 2 ** 20).toFixed(1)} MiB`);
      }
      if (with1M && made === 1_000_000) {
        // The table-size effect: 1k active flows with 1M idle ones beside them.
        const r = await activeRun(lb, 1000, rate, steadyMs);
        out.active1kWith1MIdle = { offeredPps: rate, steady: r.steady, lossPct: r.gen.lossPct, rtt: r.gen.rtt };
        console.log(`   1k active flows beside 1M idle ones at ${rate} pps: CPU ${r.steady?.totalUs.toFixed(2)} us/packet (primary ${r.steady?.primaryUs.toFixed(2)}, workers ${r.steady?.workersUs.toFixed(2)}), loss ${r.gen.lossPct?.toFixed(3)}%, RTT p99 ${r.gen.rtt?.p99} us`);
      }
    } finally { await lb.stop(); }
  }

  // CPU per packet with every flow active at a fixed rate; saturated throughput (full run).
  const rows: Record<string, unknown>[] = [];
  for (const n of counts) {
    const row: Record<string, unknown> = { flows: n };
    {
      row.quietBeforeActive = await quiet();
      const lb = await startFlowlb(lbArgs(maxFlows));
      try {
        await warmUp(lb);
        await settle(500);
        const r = await activeRun(lb, n, rate, steadyMs);
        row.active = { offeredPps: rate, creation: r.creation, steady: r.steady, lossPct: r.gen.lossPct, rtt: r.gen.rtt, generatorBound: r.gen.generatorBound, ...genLayout(n) };
        console.log(`${String(n).padStart(7)} active flows at ${rate} pps: CPU steady ${r.steady?.totalUs.toFixed(2)} us/packet (primary ${r.steady?.primaryUs.toFixed(2)}, workers ${r.steady?.workersUs.toFixed(2)}), ` +
          `while creating flows ${r.creation?.totalUs.toFixed(2)} us/packet (workers ${r.creation?.workersUs.toFixed(2)}); loss ${r.gen.lossPct?.toFixed(3)}%, RTT p50 ${r.gen.rtt?.p50} us p99 ${r.gen.rtt?.p99} us${r.gen.generatorBound ? ' (generator-bound)' : ''}`);
      } finally { await lb.stop(); }
    }
    if (!short) {
      row.quietBeforeSaturated = await quiet();
      const lb = await startFlowlb(lbArgs(maxFlows));
      try {
        await warmUp(lb);
        await settle(500);
        const r = await activeRun(lb, n, satRate, steadyMs);
        row.saturated = { offeredPps: satRate, achievedPps: r.gen.achievedRate, steady: r.steady, lossPct: r.gen.lossPct };
        console.log(`${String(n).padStart(7)} active flows, offered ${satRate} pps (sent ${Math.round(r.gen.achievedRate)}): ${Math.round(r.steady?.repliesPerSec ?? NaN)} replies/s in the steady window, CPU ${r.steady?.totalUs.toFixed(2)} us/packet`);
      } finally { await lb.stop(); }
    }
    rows.push(row);
  }

  const sat = (n: number): number => ((rows.find((r) => r.flows === n)?.saturated as { steady?: { repliesPerSec: number } } | undefined)?.steady?.repliesPerSec ?? NaN);
  const cpu = (n: number): number => ((rows.find((r) => r.flows === n)?.active as { steady?: { totalUs: number } } | undefined)?.steady?.totalUs ?? NaN);
  const largest = counts[counts.length - 1]!;
  const summary = {
    largestActive: largest,
    throughputRatioLargestTo1k: sat(largest) / sat(1000),
    cpuRatioLargestTo1k: cpu(largest) / cpu(1000),
    bytesPerIdleFlow: Object.fromEntries(memory.map((m) => [String(m.target), m.bytesPerIdleFlow as number])),
  };
  console.log(`\nCPU per packet at ${largest} active flows / at 1k: ${summary.cpuRatioLargestTo1k.toFixed(2)}x` +
    (short ? '' : `; saturated throughput at ${largest} / at 1k: ${summary.throughputRatioLargestTo1k.toFixed(2)} (target >= 0.8)`));
  console.log(`bytes per idle flow (RSS delta, target <= 300): ${Object.entries(summary.bytesPerIdleFlow).map(([k, v]) => `${k}: ${Math.round(v)}`).join(', ')}; plus ${preallocPerSlot.toFixed(0)} preallocated per --max-flows slot`);
  const native = args.native ? await nativeSection(nativeOpts()) : undefined;
  const file = writeResult('flow-scaling', {
    native,
    command: `node dist/bench/flow-scaling.js ${process.argv.slice(2).join(' ')}`.trim(),
    rate, satRate, maxFlows, populateRate, steadyMs, loadavgAtStart, loadavgAtEnd: fs.readFileSync('/proc/loadavg', 'utf8').trim(),
    ...out, summary, memory, rows,
  });
  console.log(`written ${file}`);
}

// The populator children: `--populate FROM COUNT PORT RATE`, from populate() above (not a user option).
if (process.argv[2] === '--populate') await populateMain();
else await main();
