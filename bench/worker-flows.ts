/**
 * The worker's own packet path against the number of flows, without sockets or a generator: one WorkerRuntime
 * (echo handler) in a child process is fed PACKET frames in batches, as its channel would deliver them, for
 * N flows visited round robin (every packet is for another flow than the last N - 1, as with the
 * generator's uniform distribution). The front socket is a stub whose send() only reads its arguments, so
 * the figures are flowlb's user-space cost per packet (table lookup, DRR queue, flow objects, GC), not the
 * kernel's sendmsg, which the full benchmark (flow-scaling.ts) includes.
 *
 * Per N, in a fresh process each time (its own heap):
 *  - creation: ns per packet while every flow gets its first packet (flow insert + handler onFlowStart);
 *  - steady: ns per packet over the next rounds (every flow known), the median of 7 slices;
 *  - bytes per flow: heap used and RSS after creating the flows, minus before, over N.
 * Times are the process's CPU time (the machine is shared), less the feeder's own frame writing (timed alone).
 * Rounds alternate the flow counts and are repeated; medians are reported. This reaches 1M active flows,
 * which the socket-based generator cannot drive on this machine.
 *
 *   node dist/bench/worker-flows.js [--flows 1000,100000,1000000] [--repeat 3] [--batch 64] [--rounds 3]
 * Writes results/worker-flows.json.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { defaultConfig, type FlowlbConfig } from '../src/config.js';
import { WorkerRuntime } from '../src/control/worker.js';
import { FRAME_HEADER_BYTES, writePacketFrame } from '../src/datapath/frame.js';
import { createEchoHandler } from '../src/handlers/echo.js';
import { createLogger } from '../src/log.js';
import { parseBenchArgs } from './lib/args.js';
import { median, writeResult } from './lib/procs.js';

const HERE = fileURLToPath(import.meta.url);
const PAYLOAD_BYTES = 64;

interface Sample { flows: number; frameWriteNsPerPacket: number; creationNsPerPacket: number; steadyNsPerPacket: number; heapBytesPerFlow: number; rssBytesPerFlow: number; replies: number; flowsInTable: number }

/** murmur3's finaliser: well-spread 32-bit hashes for flow numbers, like the primary's xxHash. */
function mix32(x: number): number {
  x ^= x >>> 16; x = Math.imul(x, 0x85ebca6b); x ^= x >>> 13; x = Math.imul(x, 0xc2b2ae35); x ^= x >>> 16;
  return x >>> 0;
}

function makeRuntime(capacity: number): { rt: WorkerRuntime; replies: () => number } {
  const base = defaultConfig();
  const config: FlowlbConfig = { ...base, maxFlowsPerWorker: capacity, idleTimeoutMs: 600_000, queue: { ...base.queue } };
  const handler = createEchoHandler({ workerId: 0, workers: 1, buckets: config.buckets, idleTimeoutMs: config.idleTimeoutMs, backends: [], options: {} });
  const rt = new WorkerRuntime(config, 0, handler, createLogger('error'));
  rt.owned.fill(1);
  let replies = 0;
  let sink = 0;
  const stub = {
    send(payload: Uint8Array, port: number, address: string, _cb: unknown): void { replies++; sink += address.length + port + payload.length; },
  };
  rt.fronts[0] = stub as never;
  rt.frontPorts[0] = 5300;
  return { rt, replies: () => replies + (sink < 0 ? 1 : 0) };
}

function cpuNs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) * 1000;
}

/**
 * Feeds `packets` packets (round robin over `flows` flows) to `rt` in batches, or only writes the frames
 * when `rt` is null; returns the process's CPU time spent, ns (CPU, not wall time: the machine is shared).
 */
function makeFeeder(rt: WorkerRuntime | null, flows: number, batch: number, buckets: number): (packets: number) => number {
  const addr = new Uint8Array(16);
  const payload = Buffer.alloc(PAYLOAD_BYTES);
  const chunk = Buffer.alloc(batch * (FRAME_HEADER_BYTES + PAYLOAD_BYTES));
  const bucketMask = buckets - 1;
  const drain = rt !== null ? (rt as unknown as { drain(): void }).drain.bind(rt) : null;
  let next = 0;
  return (packets: number): number => {
    const t0 = cpuNs();
    for (let done = 0; done < packets; done += batch) {
      let off = 0;
      for (let k = 0; k < batch; k++) {
        // Flow i: client 127.1.x.y:port, hash mix32(i), bucket = the hash's low bits (as the primary computes it).
        const i = next;
        next = next + 1 === flows ? 0 : next + 1;
        const a = (i / 50_000) | 0;
        addr[0] = 127; addr[1] = 1; addr[2] = (a >> 8) & 255; addr[3] = (a & 255) + 1;
        const h = mix32(i + 1);
        off = writePacketFrame(chunk, off, 4, 0, 10_000 + (i % 50_000), h & bucketMask, h, addr, payload);
      }
      if (rt !== null) {
        rt.onChunk(chunk);
        drain!();
      }
    }
    return cpuNs() - t0;
  };
}

function childMain(flows: number, batch: number, rounds: number): Sample {
  const gc = (globalThis as { gc?: () => void }).gc ?? ((): void => {});
  // Warm the code up on a throwaway runtime, so the measured one starts empty.
  { const w = makeRuntime(32_768); makeFeeder(w.rt, 20_000, batch, w.rt.config.buckets)(100_000); }
  let cap = 1024;
  while (cap < flows * 1.1) cap *= 2;
  const { rt, replies } = makeRuntime(cap);
  const feed = makeFeeder(rt, flows, batch, rt.config.buckets);
  const feedOnly = makeFeeder(null, flows, batch, rt.config.buckets);
  gc();
  const heap0 = process.memoryUsage().heapUsed, rss0 = process.memoryUsage.rss();
  const creationPackets = Math.ceil(flows / batch) * batch;
  const creationNs = feed(creationPackets) - feedOnly(creationPackets);
  gc();
  const heap1 = process.memoryUsage().heapUsed, rss1 = process.memoryUsage.rss();
  // The steady phase in slices; the median slice, so a burst of other load on the machine counts once at most.
  const sliceCount = 7;
  const slicePackets = Math.ceil(Math.max(rounds * flows, 2_000_000) / sliceCount / batch) * batch;
  const sliceNs: number[] = [];
  const writeNs: number[] = [];
  for (let k = 0; k < sliceCount; k++) {
    sliceNs.push(feed(slicePackets) / slicePackets);
    writeNs.push(feedOnly(Math.ceil(slicePackets / 4 / batch) * batch) / (Math.ceil(slicePackets / 4 / batch) * batch));
  }
  return {
    flows, creationNsPerPacket: creationNs / creationPackets, steadyNsPerPacket: median(sliceNs) - median(writeNs), frameWriteNsPerPacket: median(writeNs),
    heapBytesPerFlow: (heap1 - heap0) / rt.flows.size, rssBytesPerFlow: (rss1 - rss0) / rt.flows.size,
    replies: replies(), flowsInTable: rt.flows.size,
  };
}

function runChild(flows: number, batch: number, rounds: number): Promise<Sample> {
  return new Promise((resolve, reject) => {
    const child = fork(HERE, ['--child', String(flows), String(batch), String(rounds)], { execArgv: ['--expose-gc'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    child.once('message', (m) => resolve(m as Sample));
    child.once('exit', (c) => { if (c) reject(new Error(`child exited ${c}`)); });
  });
}

async function main(): Promise<void> {
  const args = parseBenchArgs('worker-flows', 'The worker\'s own packet path against the number of flows (no sockets): ns per packet and bytes per flow.', {
    flows: { type: 'list', default: [1000, 100_000, 1_000_000], check: 'positive-int', describe: 'Flow counts, comma-separated (one fresh child process each)' },
    repeat: { type: 'number', default: 3, check: 'positive-int', describe: 'Times every flow count is run (medians are reported)' },
    batch: { type: 'number', default: 64, check: 'positive-int', describe: 'Packets per channel chunk fed to the worker' },
    rounds: { type: 'number', default: 3, check: 'positive-int', describe: 'Steady phase: packets per flow (at least 2M packets in all)' },
  });
  const counts = args.flows;
  const repeat = args.repeat, batch = args.batch, rounds = args.rounds;
  const samples: Sample[] = [];
  for (let r = 0; r < repeat; r++) {
    for (const n of counts) {
      const s = await runChild(n, batch, rounds);
      samples.push(s);
      console.log(`round ${r + 1}: ${String(n).padStart(8)} flows: steady ${s.steadyNsPerPacket.toFixed(0)} ns/packet, creation ${s.creationNsPerPacket.toFixed(0)} ns/packet, ` +
        `heap ${s.heapBytesPerFlow.toFixed(0)} B/flow, RSS ${s.rssBytesPerFlow.toFixed(0)} B/flow`);
    }
  }
  const summary = counts.map((n) => {
    const mine = samples.filter((s) => s.flows === n);
    return {
      flows: n,
      steadyNsPerPacket: median(mine.map((s) => s.steadyNsPerPacket)),
      creationNsPerPacket: median(mine.map((s) => s.creationNsPerPacket)),
      heapBytesPerFlow: median(mine.map((s) => s.heapBytesPerFlow)),
      rssBytesPerFlow: median(mine.map((s) => s.rssBytesPerFlow)),
    };
  });
  const first = summary[0]!;
  console.log('\nmedians:');
  for (const s of summary) {
    console.log(`${String(s.flows).padStart(8)} flows: steady ${s.steadyNsPerPacket.toFixed(0)} ns/packet (${(s.steadyNsPerPacket / first.steadyNsPerPacket).toFixed(2)}x of ${first.flows}), ` +
      `creation ${s.creationNsPerPacket.toFixed(0)} ns/packet, heap ${s.heapBytesPerFlow.toFixed(0)} B/flow, RSS ${s.rssBytesPerFlow.toFixed(0)} B/flow`);
  }
  const file = writeResult('worker-flows', { command: `node dist/bench/worker-flows.js ${process.argv.slice(2).join(' ')}`.trim(), batch, rounds, repeat, summary, samples });
  console.log(`written ${file}`);
}

// The measuring child: `--child FLOWS BATCH ROUNDS`, from runChild() above (not a user option).
if (process.argv[2] === '--child') {
  const [flows, batch, rounds] = process.argv.slice(3).map(Number) as [number, number, number];
  process.send!(childMain(flows, batch, rounds));
  process.disconnect();
} else {
  await main();
}
