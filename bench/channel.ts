/**
 * Primary -> worker handoff, measured side by side (the choice of flowlb's channel): N datagram-sized messages
 * (200 B) from a parent to a child process, in batches of 32 as the primary sees them per loop turn, by
 *   - process.send per packet (JSON, payload as base64)
 *   - process.send one Buffer per batch (advanced serialisation)
 *   - an extra stdio pipe with length-prefixed frames, one write per batch (what flowlb uses)
 * Reports messages/s end to end and the sender's CPU per message. Also times the packet path's pieces
 * (Dispatcher.dispatch in a loop).
 *
 *   node dist/bench/channel.js [--count 300000]
 */
import { fork } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { Dispatcher, type ChannelSink } from '../src/datapath/dispatcher.js';
import { addressBytes, loadHasher } from '../src/datapath/tuple.js';
import { parseBenchArgs } from './lib/args.js';
import { median, writeResult } from './lib/procs.js';

const BATCH = 32;
const SIZE = 200;

if (process.argv[2] === 'child') {
  const method = process.argv[3];
  let got = 0;
  const target = Number(process.argv[4]);
  const done = (): void => { if (got >= target) { process.send!({ done: got }); } };
  if (method === 'pipe') {
    const s = new net.Socket({ fd: 4, readable: true, writable: false });
    let carry = 0;
    s.on('data', (d: Buffer) => { carry += d.length; const n = Math.floor(carry / (SIZE + 36)); got += n; carry -= n * (SIZE + 36); done(); });
  } else {
    process.on('message', (m: unknown) => {
      if (method === 'json') got += 1;
      else got += (m as Buffer | Uint8Array).length / SIZE;
      done();
    });
  }
} else {
  const args = parseBenchArgs('channel', 'Primary -> worker handoff: process.send (JSON, advanced) against a length-prefixed pipe, and Dispatcher.dispatch alone.', {
    count: { type: 'number', default: 300_000, check: 'positive-int', describe: 'Messages (200 B) handed off per method and round' },
  });
  const count = args.count;
  const self = fileURLToPath(import.meta.url);
  const results: Record<string, { rate: number[]; usPerMsg: number[] }> = {};
  const payload = Buffer.alloc(SIZE, 7);

  async function run(method: 'json' | 'advanced' | 'pipe'): Promise<void> {
    const child = fork(self, ['child', method, String(count)], {
      serialization: method === 'advanced' ? 'advanced' : 'json',
      stdio: ['inherit', 'inherit', 'inherit', 'ipc', 'pipe'],
    });
    await new Promise((r) => setTimeout(r, 300));
    const pipe = child.stdio[4] as net.Socket;
    const finished = new Promise<void>((resolve) => child.once('message', () => resolve()));
    const c0 = process.cpuUsage();
    const t0 = performance.now();
    let sent = 0;
    const frame = Buffer.alloc((SIZE + 36) * BATCH);
    await new Promise<void>((resolve) => {
      const turn = (): void => {
        // One "loop turn": a batch, then yield (as the primary does), respecting backpressure.
        if (method === 'json') {
          for (let i = 0; i < BATCH; i++) child.send({ t: 'p', d: payload.toString('base64') });
        } else if (method === 'advanced') {
          child.send(Buffer.concat(Array.from({ length: BATCH }, () => payload)));
        } else {
          pipe.write(Buffer.from(frame));
        }
        sent += BATCH;
        if (sent >= count) { resolve(); return; }
        const backlog = method === 'pipe' ? pipe.writableLength > 4 << 20 : (child as unknown as { channel?: { writeQueueSize?: number } }).channel?.writeQueueSize! > 4 << 20;
        if (backlog) setTimeout(turn, 1); else setImmediate(turn);
      };
      turn();
    });
    await finished;
    const secs = (performance.now() - t0) / 1000;
    const cpu = process.cpuUsage(c0);
    child.kill();
    const r = (results[method] ??= { rate: [], usPerMsg: [] });
    r.rate.push(sent / secs);
    r.usPerMsg.push((cpu.user + cpu.system) / sent);
  }

  for (let round = 0; round < 3; round++) for (const m of ['json', 'advanced', 'pipe'] as const) await run(m);

  // The packet path itself, without sockets.
  const hasher = await loadHasher();
  const sink: ChannelSink = { write: () => true, writableLength: 0 };
  const d = new Dispatcher({ buckets: 1024, maxWorkers: 2, maxHolds: 1, maxDatagramBytes: 65535, channelLimitBytes: 1 << 30, holdLimit: 1, hasher });
  d.setListeners([{ family: 4, address: addressBytes('127.0.0.1', 4), port: 5300 }]);
  for (let b = 0; b < 1024; b++) d.table.owner[b] = b & 1;
  d.setSink(0, sink); d.setSink(1, sink);
  const addrs = Array.from({ length: 256 }, (_, i) => `127.0.${i}.1`);
  const dispatchNs: number[] = [];
  for (let r = 0; r < 3; r++) {
    const N = 1_000_000;
    const c0 = process.cpuUsage();
    for (let i = 0; i < N; i++) { d.dispatch(0, payload, addrs[i & 255]!, 'IPv4', 1024 + (i & 4095)); if ((i & 15) === 15) d.flushAll(); }
    const c = process.cpuUsage(c0);
    dispatchNs.push(((c.user + c.system) * 1000) / N);
  }

  const summary = {
    count, batch: BATCH, size: SIZE,
    methods: Object.fromEntries(Object.entries(results).map(([k, v]) => [k, { ratePps: median(v.rate), senderUsPerMsg: median(v.usPerMsg) }])),
    dispatchNsPerPacket: median(dispatchNs),
  };
  console.log(`handoff of ${count} x ${SIZE} B messages in batches of ${BATCH}, medians of 3:`);
  for (const [k, v] of Object.entries(summary.methods)) console.log(`  ${k.padEnd(9)} ${Math.round(v.ratePps).toString().padStart(8)} msg/s   sender ${v.senderUsPerMsg.toFixed(2)} us CPU/msg`);
  console.log(`  Dispatcher.dispatch (parse + hash + frame, no socket): ${summary.dispatchNsPerPacket.toFixed(0)} ns/packet`);
  console.log(`  written ${writeResult('channel', summary)}`);
}
