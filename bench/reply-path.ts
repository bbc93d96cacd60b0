/**
 * Who sends the replies: measured side by side. A parent receives UDP (as flowlb's primary does) and hands
 * every datagram to a child over a pipe in per-turn batches; the child echoes it either
 *   - itself, on a duplicate of the parent's socket handle (reading left to the parent)  -> flowlb's choice
 *   - through the parent: reply frames go back over a second pipe and the parent sends them
 * At a fixed offered rate from the flowlb generator, report each process's CPU per echoed packet, and RTT.
 *
 *   node dist/bench/reply-path.js [--rate 30000] [--seconds 3] [--rounds 2]
 */
import { fork } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { stopReading } from '../src/control/socket-handle.js';
import { runGenerator } from '../src/gen/run.js';
import { parseBenchArgs } from './lib/args.js';
import { cpuSeconds, median, writeResult } from './lib/procs.js';

// Frame: u16 len, u16 port, u8 addr-len, addr bytes (ASCII), payload.
function encode(buf: Buffer, off: number, msg: Buffer, port: number, address: string): number {
  const alen = buf.write(address, off + 5, 'latin1');
  buf.writeUInt16LE(msg.length, off);
  buf.writeUInt16LE(port, off + 2);
  buf[off + 4] = alen;
  msg.copy(buf, off + 5 + alen);
  return off + 5 + alen + msg.length;
}
function decodeAll(chunk: Buffer, fn: (msg: Buffer, port: number, address: string) => void): void {
  let off = 0;
  while (off + 5 <= chunk.length) {
    const len = chunk.readUInt16LE(off), port = chunk.readUInt16LE(off + 2), alen = chunk[off + 4]!;
    const address = chunk.toString('latin1', off + 5, off + 5 + alen);
    fn(chunk.subarray(off + 5 + alen, off + 5 + alen + len), port, address);
    off += 5 + alen + len;
  }
}

/** Batches frames and flushes once per loop turn. */
class Batcher {
  private buf = Buffer.allocUnsafe(1 << 20);
  private off = 0;
  private scheduled = false;
  constructor(private readonly out: net.Socket) {}
  add(msg: Buffer, port: number, address: string): void {
    if (this.off + msg.length + 64 > this.buf.length) this.flush();
    this.off = encode(this.buf, this.off, msg, port, address);
    if (!this.scheduled) { this.scheduled = true; setImmediate(() => this.flush()); }
  }
  flush(): void {
    this.scheduled = false;
    if (this.off === 0) return;
    this.out.write(this.buf.subarray(0, this.off));
    this.buf = Buffer.allocUnsafe(1 << 20);
    this.off = 0;
  }
}

// Stream frames can split across chunks; frames here are small and batches arrive whole in practice, but
// keep a carry buffer to be correct.
function framedReader(sock: net.Socket, fn: (msg: Buffer, port: number, address: string) => void): void {
  let carry: Buffer | null = null;
  sock.on('data', (d: Buffer) => {
    let chunk = carry ? Buffer.concat([carry, d]) : d;
    carry = null;
    let off = 0;
    while (off + 5 <= chunk.length) {
      const len = chunk.readUInt16LE(off), alen = chunk[off + 4]!;
      const end = off + 5 + alen + len;
      if (end > chunk.length) break;
      off = end;
    }
    if (off < chunk.length) { carry = Buffer.from(chunk.subarray(off)); chunk = chunk.subarray(0, off); }
    decodeAll(chunk, fn);
  });
}

if (process.argv[2] === 'worker') {
  const mode = process.argv[3];
  const inPipe = new net.Socket({ fd: 4, readable: true, writable: false });
  if (mode === 'worker-sends') {
    process.on('message', (_m, handle) => {
      const s = handle as dgram.Socket;
      stopReading(s);
      framedReader(inPipe, (msg, port, address) => { s.send(msg, port, address); });
      process.send!('ready');
    });
  } else {
    const outPipe = new net.Socket({ fd: 5, readable: false, writable: true });
    const back = new Batcher(outPipe);
    framedReader(inPipe, (msg, port, address) => back.add(msg, port, address));
    process.send!('ready');
  }
} else if (process.argv[2] === 'front') {
  // The primary's role: receive, batch to the worker, and (primary-sends) send the replies.
  const mode = process.argv[3] as 'worker-sends' | 'primary-sends';
  const self = fileURLToPath(import.meta.url);
  const socket = dgram.createSocket('udp4');
  socket.bind(0, '127.0.0.1', () => {
    socket.setRecvBufferSize(4 << 20);
    const child = fork(self, ['worker', mode], { stdio: ['inherit', 'inherit', 'inherit', 'ipc', 'pipe', 'pipe'] });
    const toChild = new Batcher(child.stdio[4] as net.Socket);
    socket.on('message', (msg, rinfo) => toChild.add(msg, rinfo.port, rinfo.address));
    if (mode === 'primary-sends') framedReader((child.stdio as unknown as net.Socket[])[5]!, (msg, port, address) => { socket.send(msg, port, address); });
    child.once('message', () => process.send!({ port: socket.address().port, workerPid: child.pid }));
    if (mode === 'worker-sends') child.send('socket', socket as never); else child.send('go');
    process.on('disconnect', () => { child.kill(); process.exit(0); });
  });
} else {
  const args = parseBenchArgs('reply-path', 'Who sends the replies: the worker on a duplicate of the socket, or the primary; CPU per echoed packet and RTT.', {
    rate: { type: 'number', default: 30_000, check: 'positive', describe: 'Offered rate, packets/s' },
    seconds: { type: 'number', default: 3, check: 'positive', describe: 'Length of each run, s' },
    rounds: { type: 'number', default: 2, check: 'positive-int', describe: 'Rounds (medians are reported)' },
  });
  const rate = args.rate, seconds = args.seconds, rounds = args.rounds;
  const self = fileURLToPath(import.meta.url);
  const out: Record<string, { frontUs: number[]; workerUs: number[]; p50: number[]; p99: number[]; loss: number[] }> = {};

  async function run(mode: 'worker-sends' | 'primary-sends'): Promise<void> {
    const front = fork(self, ['front', mode]);
    const { port, workerPid } = await new Promise<{ port: number; workerPid: number }>((r) => front.once('message', (m) => r(m as never)));
    const f0 = cpuSeconds(front.pid!), w0 = cpuSeconds(workerPid);
    const g = await runGenerator({ target: { host: '127.0.0.1', port }, flows: 64, ratePps: rate, durationMs: seconds * 1000, sizeBytes: 200, socketBufferBytes: 1 << 20 });
    const fCpu = cpuSeconds(front.pid!) - f0, wCpu = cpuSeconds(workerPid) - w0;
    front.disconnect();
    await new Promise((r) => setTimeout(r, 200));
    const r = (out[mode] ??= { frontUs: [], workerUs: [], p50: [], p99: [], loss: [] });
    r.frontUs.push((fCpu * 1e6) / g.received);
    r.workerUs.push((wCpu * 1e6) / g.received);
    r.p50.push(g.rtt?.p50 ?? NaN);
    r.p99.push(g.rtt?.p99 ?? NaN);
    r.loss.push(g.lossPct ?? NaN);
  }
  for (let i = 0; i < rounds; i++) for (const m of ['worker-sends', 'primary-sends'] as const) await run(m);
  const summary = Object.fromEntries(Object.entries(out).map(([k, v]) => [k, {
    primaryUsPerPacket: median(v.frontUs), workerUsPerPacket: median(v.workerUs), rttP50Us: median(v.p50), rttP99Us: median(v.p99), lossPct: median(v.loss),
  }]));
  console.log(`echo at ${rate} pps for ${seconds}s, medians of ${rounds} rounds (CPU per echoed packet):`);
  for (const [k, v] of Object.entries(summary)) {
    console.log(`  ${k.padEnd(14)} primary ${v.primaryUsPerPacket.toFixed(2)} us   worker ${v.workerUsPerPacket.toFixed(2)} us   RTT p50 ${v.rttP50Us} us p99 ${v.rttP99Us} us   loss ${v.lossPct}%`);
  }
  console.log(`  written ${writeResult('reply-path', { rate, seconds, rounds, summary, raw: out })}`);
}
