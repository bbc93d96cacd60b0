/**
 * Primary cost per dispatched packet, against a bare Node dgram receiver, in the same run with the same
 * offered load: CPU seconds of the receiving process (all threads, /proc/PID/stat) over a bounded blast,
 * divided by the packets it took in. flowlb runs 2 workers with a sink handler, so its primary's work is
 * exactly receive + parse + hash + batch + pipe write.
 *
 *   node dist/bench/primary-cost.js [--rate 60000] [--seconds 4] [--trials 3] [--size 200] [--flows 256] [--pin]
 */
import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { runGenerator } from '../src/gen/run.js';
import { parseBenchArgs } from './lib/args.js';
import { cpuSeconds, median, ROOT, sleep, startFlowlb, startPlain, writeResult } from './lib/procs.js';


const args = parseBenchArgs('primary-cost', 'Primary CPU per dispatched packet against a bare Node dgram receiver, same offered load.', {
  rate: { type: 'number', default: 60_000, check: 'positive', describe: 'Offered rate, packets/s' },
  seconds: { type: 'number', default: 4, check: 'positive', describe: 'Length of each blast, s' },
  trials: { type: 'number', default: 3, check: 'positive-int', describe: 'Trials (medians are reported)' },
  size: { type: 'number', default: 200, check: 'positive-int', describe: 'Datagram size, bytes' },
  flows: { type: 'number', default: 256, check: 'positive-int', describe: 'Generator flows' },
  pin: { type: 'boolean', describe: 'Measured process alone on CPU 0, generator and workers on CPU 1 (taskset)' },
});
const rate = args.rate, seconds = args.seconds, trials = args.trials, size = args.size;
const flows = args.flows;
/**
 * --pin: the measured process (bare receiver or flowlb primary) alone on CPU 0; the generator and flowlb's
 * workers on CPU 1. Without it every process shares both cores and the figures include contention.
 */
const pin = args.pin;
function pinTo(pid: number, cpu: number): void {
  if (pin) execFileSync('taskset', ['-pc', String(cpu), String(pid)], { stdio: 'ignore' });
}
if (pin) pinTo(process.pid, 1);

async function blast(port: number): Promise<{ sent: number; achieved: number }> {
  const r = await runGenerator({
    target: { host: '127.0.0.1', port }, flows, ratePps: rate, durationMs: seconds * 1000, sizeBytes: size,
    expectReplies: false, procs: 2, socketBufferBytes: 1 << 20,
  });
  return { sent: r.sent, achieved: r.achievedRate };
}

const bare: number[] = [], primary: number[] = [], batchSizes: number[] = [];
const rows: unknown[] = [];
for (let t = 0; t < trials; t++) {
  {
    const p = await startPlain('receiver');
    pinTo(p.proc.pid!, 0);
    await sleep(200);
    const c0 = cpuSeconds(p.proc.pid!);
    const n0 = await p.count();
    const g = await blast(p.port);
    await sleep(300);
    const n1 = await p.count();
    const cpu = cpuSeconds(p.proc.pid!) - c0;
    const us = (cpu * 1e6) / (n1 - n0);
    bare.push(us);
    rows.push({ trial: t, what: 'bare dgram receiver', sent: g.sent, received: n1 - n0, cpuSeconds: cpu, usPerPacket: us });
    await p.stop();
  }
  {
    const f = await startFlowlb(['--workers', '2', '--handler', path.join(ROOT, 'bench/handlers/sink-handler.js'), '--no-balance']);
    await sleep(300);
    const pid = f.proc.pid!;
    const s0 = await f.status();
    pinTo(pid, 0);
    for (const w of s0.workers as { pid: number }[]) pinTo(w.pid, 1);
    const c0 = cpuSeconds(pid);
    const g = await blast(f.port);
    await sleep(300);
    const cpu = cpuSeconds(pid) - c0;
    const s1 = await f.status();
    const dispatched = s1.workers.reduce((a: number, w: { dispatchedPackets: number }) => a + w.dispatchedPackets, 0)
      - s0.workers.reduce((a: number, w: { dispatchedPackets: number }) => a + w.dispatchedPackets, 0);
    const received = s1.received - s0.received;
    const us = (cpu * 1e6) / dispatched;
    primary.push(us);
    const batches = s1.workers.reduce((a: number, w: { batches?: number }) => a + (w.batches ?? 0), 0);
    if (batches > 0) batchSizes.push(dispatched / batches);
    rows.push({ trial: t, what: 'flowlb primary (2 workers, sink)', sent: g.sent, received, dispatched, dropped: s1.dropped, cpuSeconds: cpu, usPerPacket: us });
    await f.stop();
  }
}
const summary = {
  rate, seconds, size, flows, trials, pinned: pin,
  bareUsPerPacket: median(bare), primaryUsPerPacket: median(primary), ratio: median(primary) / median(bare),
  meanBatchPackets: median(batchSizes),
  rows,
};
console.log(`offered ${rate} pps x ${seconds}s, ${size} B, ${flows} flows, ${trials} trials (medians)${pin ? ', measured process pinned alone on CPU 0' : ''}`);
console.log(`  bare Node dgram receiver : ${summary.bareUsPerPacket.toFixed(2)} us CPU / packet   (${bare.map((x) => x.toFixed(2)).join(', ')})`);
console.log(`  flowlb primary           : ${summary.primaryUsPerPacket.toFixed(2)} us CPU / packet   (${primary.map((x) => x.toFixed(2)).join(', ')})`);
console.log(`  ratio primary / bare     : ${summary.ratio.toFixed(3)}  (target <= 1.25)`);
console.log(`  written ${writeResult('primary-cost', summary)}`);
