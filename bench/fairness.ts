/**
 * Fairness inside one worker: 50 light flows and one heavy flow sending at 10x a light flow's rate, all on the
 * same worker (1 worker), with the burn handler's per-packet cost set so that the worker is near saturation.
 * Inside a worker packets queue per flow and are served by deficit round robin (DRR); a flow sending more
 * than its share builds a queue of its own, and the others should not wait behind it.
 *
 * Runs (same client sockets, same UDP port, a fresh flowlb per run):
 *   light only          50 x r                                    (the light flows' baseline)
 *   + heavy 10x         50 x r + 10 r, ~0.9 of the worker's capacity
 *   + heavy overload    50 x r + H r, H set so the total is ~1.25x capacity: the heavy flow alone overloads
 *   ... and the two heavy runs again (--short: only the overload one) with the DRR quantum at 2^31-1 bytes
 *   ("exhaustive"): a flow's turn then
 *   lasts until its queue is empty, so a light packet waits behind the heavy flow's whole backlog, as in a
 *   FIFO. That contrast is the DRR effect.
 * Capacity: the packets one worker handled per second while offered more than it could (uniform flows).
 *
 *   node dist/bench/fairness.js [--short] [--cost-us 200] [--seconds 12] [--light 50] [--heavy-x 10] [--quiet-wait 90]
 * Writes results/fairness.json and results/fairness.svg.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { runGenerator } from '../src/gen/run.js';
import { barChartSpec, renderChart, type BarRow } from './lib/chart.js';
import { parseBenchArgs } from './lib/args.js';
import { ROOT, sleep, writeResult } from './lib/procs.js';
import { startRttClient, type GroupResult } from './lib/rtt-client.js';
import { diffDrops, freeUdpPort, killLb, startOn, sumDrops, waitForQuiet, waitIdle } from './lib/sampler.js';


const args = parseBenchArgs('fairness', 'Fairness inside one worker: light flows and one heavy flow, DRR against exhaustive service (the light flows\' RTT p99).', {
  short: { type: 'boolean', describe: 'Short run: shorter runs, no quiet wait, only the overload pair in exhaustive mode' },
  'cost-us': { type: 'number', default: 200, check: 'positive', describe: 'CPU the burn handler spends per packet, us' },
  seconds: { type: 'number', default: 12, short: 4, check: 'positive', describe: 'Length of each run, s' },
  light: { type: 'number', default: 50, check: 'positive-int', describe: 'Light flows' },
  'heavy-x': { type: 'number', default: 10, check: 'positive', describe: 'The heavy flow\'s rate, in light flows\' rates' },
  'quiet-wait': { type: 'number', default: 90, short: 0, check: 'nonnegative', describe: 'Wait at most this long for the machine to be idle before each run, s (0: no wait)' },
});
const short = args.short;
const costUs = args['cost-us'], seconds = args.seconds, light = args.light, heavyX = args['heavy-x'];
const sizeBytes = 200, EXHAUSTIVE_QUANTUM = 2 ** 31 - 1;
const loadavgAtStart = fs.readFileSync('/proc/loadavg', 'utf8').trim();
const quietWaitMs = args['quiet-wait'] * 1000;

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-fairness-'));
function configFile(name: string, quantumBytes?: number): string {
  const file = path.join(tmp, `${name}.json`);
  fs.writeFileSync(file, JSON.stringify({
    handler: path.join(ROOT, 'test/fixtures/burn-handler.js'), handlerOptions: { costUs },
    ...(quantumBytes ? { queue: { quantumBytes } } : {}),
  }));
  return file;
}
const drrCfg = configFile('drr'), exhaustiveCfg = configFile('exhaustive', EXHAUSTIVE_QUANTUM);

// Capacity of one worker.
let capacityPps: number;
{
  if (quietWaitMs > 0) await waitForQuiet(quietWaitMs);
  const lb = await startOn(0, ['--config', drrCfg, '--workers', '1']);
  try {
    const ideal = 1e6 / costUs;
    await runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 32, ratePps: ideal * 0.2, durationMs: short ? 500 : 1000, sizeBytes, drainMs: 300 });
    await waitIdle(lb, 5000);
    const satMs = short ? 2500 : 4000;
    const gen = runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 64, ratePps: ideal * 1.1, durationMs: satMs, sizeBytes, procs: 1, drainMs: 0, expectReplies: false });
    await sleep(1200);
    const a = await lb.status(); const ta = performance.now();
    await sleep(satMs - 1700);
    const b = await lb.status(); const tb = performance.now();
    await gen;
    capacityPps = (b.workers[0].handled - a.workers[0].handled) / ((tb - ta) / 1000);
  } finally { await killLb(lb); }
}
const r = (0.9 * capacityPps) / (light + heavyX); // one light flow's rate
const overloadX = Math.max(heavyX, (1.25 * capacityPps) / r - light);
console.log(`1 worker, burn ${costUs} us/packet: capacity ${Math.round(capacityPps)} pps handled (saturated); light flow rate ${r.toFixed(1)} pps, heavy ${heavyX}x = ${(heavyX * r).toFixed(0)} pps, overload heavy ${overloadX.toFixed(1)}x = ${(overloadX * r).toFixed(0)} pps`);

interface Run { name: string; cfg: string; heavy: number }
const runsPlan: Run[] = [
  { name: 'light only', cfg: drrCfg, heavy: 0 },
  { name: `+ heavy ${heavyX}x (DRR)`, cfg: drrCfg, heavy: heavyX },
  // --short leaves this one out to stay under a minute; the overload pair shows the contrast too.
  ...(short ? [] : [{ name: `+ heavy ${heavyX}x (exhaustive)`, cfg: exhaustiveCfg, heavy: heavyX }]),
  { name: '+ heavy overload (DRR)', cfg: drrCfg, heavy: overloadX },
  { name: '+ heavy overload (exhaustive)', cfg: exhaustiveCfg, heavy: overloadX },
];

const port = await freeUdpPort();
// Flow 0 is the heavy one (group 1); flows 1..light are the light ones (group 0).
const client = await startRttClient({ weights: [heavyX, ...new Array<number>(light).fill(1)], groups: [1, ...new Array<number>(light).fill(0)], sizeBytes });
const results: { quiet: unknown; name: string; offeredPps: number; load: number; light: GroupResult; heavy: GroupResult | null; drops: Record<string, number>; queuePeak: number }[] = [];
try {
  for (const run of runsPlan) {
    const quiet = quietWaitMs > 0 ? await waitForQuiet(quietWaitMs) : null;
    const lb = await startOn(port, ['--config', run.cfg, '--workers', '1']);
    try {
      await runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 32, ratePps: 500, durationMs: short ? 500 : 1000, sizeBytes, drainMs: 300 });
      await waitIdle(lb, 5000);
      const s0 = await lb.status();
      const offeredPps = r * (light + run.heavy);
      const res = await client.run({ port, ratePps: offeredPps, durationMs: seconds * 1000, drainMs: short ? 1000 : 2000, weights: [run.heavy, ...new Array<number>(light).fill(1)], steadyFromMs: 1000 });
      const s1 = await lb.status();
      const lightRes = res.groups[0]!, heavyRes = run.heavy > 0 ? res.groups[1]! : null;
      const out = { quiet, name: run.name, offeredPps: Math.round(offeredPps), load: offeredPps / capacityPps, light: lightRes, heavy: heavyRes, drops: diffDrops(sumDrops(s0), sumDrops(s1)), queuePeak: 0 };
      results.push(out);
      const f = (g: GroupResult | null): string => g ? `p50 ${((g.steady?.p50Us ?? NaN) / 1000).toFixed(2)} ms, p99 ${((g.steady?.p99Us ?? NaN) / 1000).toFixed(2)} ms, loss ${((100 * g.lost) / Math.max(1, g.sent)).toFixed(2)}%` : '-';
      console.log(`${run.name.padEnd(30)} offered ${Math.round(offeredPps)} pps (${out.load.toFixed(2)} x capacity): light ${f(lightRes)} | heavy ${f(heavyRes)} | drops ${JSON.stringify(out.drops)}`);
    } finally { await killLb(lb); }
  }
} finally {
  await client.close();
}

const base = results[0]!.light.steady!.p99Us;
const withHeavy = results[1]!.light.steady!.p99Us;
console.log(`light flows' p99 (after the first second): alone ${(base / 1000).toFixed(2)} ms, with the heavy flow at ${heavyX}x ${(withHeavy / 1000).toFixed(2)} ms (${(withHeavy / base).toFixed(2)}x)`);

const rows: BarRow[] = [];
for (const x of results) {
  rows.push({ category: x.name, metric: 'RTT p99 (ms)', value: (x.light.steady?.p99Us ?? NaN) / 1000, series: 'light flows' });
  if (x.heavy) rows.push({ category: x.name, metric: 'RTT p99 (ms)', value: (x.heavy.steady?.p99Us ?? NaN) / 1000, series: 'heavy flow' });
  rows.push({ category: x.name, metric: 'loss (%)', value: (100 * x.light.lost) / x.light.sent, series: 'light flows' });
  if (x.heavy) rows.push({ category: x.name, metric: 'loss (%)', value: (100 * x.heavy.lost) / x.heavy.sent, series: 'heavy flow' });
}
const svg = await renderChart(barChartSpec(`Fairness: ${light} light flows + 1 heavy, 1 worker, burn ${costUs} us/packet (DRR vs exhaustive service)`, rows, { panelWidth: 360 }), path.join(ROOT, 'results/fairness.svg'));
const file = writeResult('fairness', {
  command: `node dist/bench/fairness.js ${process.argv.slice(2).join(' ')}`.trim(),
  costUs, seconds, lightFlows: light, heavyX, overloadX, capacityPps: Math.round(capacityPps), lightFlowPps: r, loadavgAtStart,
  loadavgAtEnd: fs.readFileSync('/proc/loadavg', 'utf8').trim(),
  lightP99AloneUs: base, lightP99WithHeavyUs: withHeavy, ratio: withHeavy / base,
  runs: results.map((x) => ({ ...x, light: { ...x.light, windows: undefined }, heavy: x.heavy ? { ...x.heavy, windows: undefined } : null })),
});
fs.rmSync(tmp, { recursive: true, force: true });
console.log(`written ${file} and ${svg}`);
