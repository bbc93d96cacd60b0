/**
 * End-to-end echo: flowlb (2 workers, echo) against a plain single-process Node dgram echo, same client, same
 * run. For each: the highest offered rate with < 0.1% loss (findMaxRate: doubling, then bisection), and RTT
 * p50/p99 at a fixed moderate rate. Prints the ratio flowlb / plain and writes results/echo.json.
 *
 *   node dist/bench/echo.js [--flows 64] [--size 200] [--rtt-rate 5000] [--trial-ms 1500] [--rounds 2] [--procs 2]
 */
import { findMaxRate, runGenerator, type GenResult } from '../src/gen/run.js';
import { parseBenchArgs } from './lib/args.js';
import { median, sleep, startFlowlb, startPlain, writeResult } from './lib/procs.js';

const args = parseBenchArgs('echo', 'End-to-end echo: flowlb (2 workers) against a plain single-process Node dgram echo: max rate at < 0.1% loss, RTT at a fixed rate.', {
  flows: { type: 'number', default: 64, check: 'positive-int', describe: 'Generator flows' },
  size: { type: 'number', default: 200, check: 'positive-int', describe: 'Datagram size, bytes' },
  'rtt-rate': { type: 'number', default: 5000, check: 'positive', describe: 'Offered rate of the RTT run, packets/s' },
  'trial-ms': { type: 'number', default: 1500, check: 'positive', describe: 'Length of each max-rate trial, ms' },
  rounds: { type: 'number', default: 2, check: 'positive-int', describe: 'Rounds (medians are reported)' },
  procs: { type: 'number', default: 2, check: 'positive-int', describe: 'Generator processes' },
});
const flows = args.flows, size = args.size, rttRate = args['rtt-rate'], trialMs = args['trial-ms'];
const rounds = args.rounds, procs = args.procs;

interface Target { name: string; start(): Promise<{ port: number; stop(): Promise<void> }> }
const targets: Target[] = [
  { name: 'plain Node echo (1 process)', start: () => startPlain('echo') },
  { name: 'flowlb echo (2 workers)', start: () => startFlowlb(['--workers', '2']) },
];

const maxRates: Record<string, number[]> = {}, p50: Record<string, number[]> = {}, p99: Record<string, number[]> = {};
const runs: unknown[] = [];
for (let r = 0; r < rounds; r++) {
  for (const t of targets) {
    const s = await t.start();
    await sleep(300);
    const base = { target: { host: '127.0.0.1', port: s.port }, flows, sizeBytes: size, procs, socketBufferBytes: 1 << 20, drainMs: 500 };
    const max = await findMaxRate(base, { lossPct: 0.1, startRate: 8000, trialMs, maxTrials: 9, precision: 0.08, pauseMs: 300 });
    await sleep(300);
    const fixed: GenResult = await runGenerator({ ...base, ratePps: rttRate, durationMs: 3000 });
    await s.stop();
    (maxRates[t.name] ??= []).push(max.rate);
    (p50[t.name] ??= []).push(fixed.rtt?.p50 ?? NaN);
    (p99[t.name] ??= []).push(fixed.rtt?.p99 ?? NaN);
    runs.push({ round: r, target: t.name, maxRate: max.rate, limitedBy: max.limitedBy, trials: max.trials, fixedRate: rttRate, rtt: fixed.rtt, lossPct: fixed.lossPct });
    console.log(`round ${r} ${t.name}: max ${max.rate} pps (${max.limitedBy}); at ${rttRate} pps RTT p50 ${fixed.rtt?.p50} us p99 ${fixed.rtt?.p99} us, loss ${fixed.lossPct}%`);
  }
}
const [plain, lb] = targets.map((t) => t.name) as [string, string];
const summary = {
  flows, size, rttRate, rounds, procs,
  plain: { maxRatePps: median(maxRates[plain]!), rttP50Us: median(p50[plain]!), rttP99Us: median(p99[plain]!) },
  flowlb: { maxRatePps: median(maxRates[lb]!), rttP50Us: median(p50[lb]!), rttP99Us: median(p99[lb]!) },
  runs,
};
const ratio = summary.flowlb.maxRatePps / summary.plain.maxRatePps;
console.log(`\nmedians over ${rounds} rounds, ${flows} flows, ${size} B:`);
console.log(`  plain echo : max ${summary.plain.maxRatePps} pps at <0.1% loss; RTT p50 ${summary.plain.rttP50Us} us, p99 ${summary.plain.rttP99Us} us at ${rttRate} pps`);
console.log(`  flowlb     : max ${summary.flowlb.maxRatePps} pps at <0.1% loss; RTT p50 ${summary.flowlb.rttP50Us} us, p99 ${summary.flowlb.rttP99Us} us at ${rttRate} pps`);
console.log(`  ratio flowlb/plain max rate: ${ratio.toFixed(3)} (target >= 0.8)`);
console.log(`  written ${writeResult('echo', { ...summary, ratio })}`);
