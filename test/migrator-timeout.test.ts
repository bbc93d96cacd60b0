/**
 * The migrator's timeout, unit-level (real Migrator and Dispatcher, a fake peer and fake channels): a busy worker
 * that shows progress gets more time up to the cap, a silent one times out; a late hand-over is counted
 * (migration_late per lane) and its flows and socket handles go to the current owner, or are counted lost and
 * closed when the bucket is moving again; a timeout after the hand-over came back still delivers its packets
 * before the held ones. The same with real processes: test/migration.test.ts.
 */
import dgram from 'node:dgram';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { Migrator, TIMEOUT_CAP, type MigrationPeer } from '../src/control/migrator.js';
import type { PrimaryToWorker } from '../src/control/protocol.js';
import { Dispatcher, type ChannelSink } from '../src/datapath/dispatcher.js';
import { FRAME_HEADER_BYTES, writePacketFrame } from '../src/datapath/frame.js';
import { hashTupleStrings, loadHasher, type RawHasher } from '../src/datapath/tuple.js';
import { createLogger } from '../src/log.js';

const quiet = createLogger('error', {}, () => {});
const T = 40;
const PORT = 40_000;
let hasher: RawHasher;
beforeAll(async () => { hasher = await loadHasher(); });

const sockets: dgram.Socket[] = [];
afterEach(() => { for (const s of sockets.splice(0)) try { s.close(); } catch { /* closed */ } });

class Sink implements ChannelSink {
  readonly chunks: Buffer[] = [];
  readonly writableLength = 0;
  write(chunk: Buffer): boolean { this.chunks.push(Buffer.from(chunk)); return true; }
  /** Payloads of the PACKET frames written, in order. */
  payloads(): string[] {
    const all = Buffer.concat(this.chunks), out: string[] = [];
    for (let off = 0; off < all.length;) {
      const len = all.readUInt32LE(off);
      if (all[off + 4] === 1) out.push(all.subarray(off + FRAME_HEADER_BYTES, off + len).toString());
      off += len;
    }
    return out;
  }
}

interface Sent { lane: number; msg: PrimaryToWorker; handle?: dgram.Socket }

function setup(): { d: Dispatcher; m: Migrator; sent: Sent[]; sinks: Sink[]; progress: number[]; bucket: number } {
  const d = new Dispatcher({
    buckets: 64, maxWorkers: 2, maxHolds: 4, maxDatagramBytes: 1000, channelLimitBytes: 1 << 20, holdLimit: 100, hasher,
  });
  d.setListeners([{ family: 4, port: 5300, address: new Uint8Array([127, 0, 0, 1]) }]);
  const sinks = [new Sink(), new Sink()];
  d.setSink(0, sinks[0]!);
  d.setSink(1, sinks[1]!);
  const bucket = hashTupleStrings(hasher, '127.0.0.1', PORT, '127.0.0.1', 5300) & 63;
  for (let b = 0; b < 64; b++) d.table.set(b, 0);
  const sent: Sent[] = [];
  const progress = [-Infinity, -Infinity];
  const peer: MigrationPeer = {
    send: (lane, msg, handle, done) => { sent.push({ lane, msg, handle }); done?.(); return true; },
    alive: () => true,
    lastProgressMs: (lane) => progress[lane]!,
  };
  const m = new Migrator(d, peer, T, quiet, () => {});
  return { d, m, sent, sinks, progress, bucket };
}

function frames(bucket: number, payloads: string[]): string {
  const buf = Buffer.alloc(payloads.reduce((a, p) => a + FRAME_HEADER_BYTES + p.length, 0));
  let off = 0;
  for (const p of payloads) off = writePacketFrame(buf, off, 4, 0, PORT, bucket, 0, new Uint8Array(16), Buffer.from(p));
  return buf.toString('base64');
}

function flow(n: number, socket = -1): { hash: number; port: number; family: number; listener: number; addr: string; packets: number; data: unknown; socket: number } {
  return { hash: n, port: PORT + n, family: 4, listener: 0, addr: Buffer.alloc(16).toString('base64'), packets: 1, data: { count: n }, socket };
}

async function udpSocket(): Promise<{ socket: dgram.Socket; closed: () => boolean }> {
  const socket = dgram.createSocket('udp4');
  sockets.push(socket);
  let closed = false;
  socket.on('close', () => { closed = true; });
  await new Promise<void>((r) => socket.bind(0, '127.0.0.1', () => r()));
  return { socket, closed: () => closed };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('migration timeout (unit)', () => {
  it('waits longer for a worker that shows progress, up to the cap; times out a silent one after one timeout', async () => {
    const busy = setup();
    const keepBusy = setInterval(() => { busy.progress[0] = performance.now(); }, 5);
    try {
      expect(busy.m.start(busy.bucket, 1)).toBe(true);
      await sleep(2.5 * T);
      expect(busy.m.inFlight).toBe(1);
      expect(busy.m.extended).toBeGreaterThanOrEqual(1);
      await sleep(3 * T);
      expect(busy.m.timeouts).toBe(1);
      const r = busy.m.recent[0]!;
      expect(r.outcome).toBe('timeout');
      expect(r.durationMs).toBeGreaterThanOrEqual(TIMEOUT_CAP * T - 2);
      expect(r.durationMs).toBeLessThan(TIMEOUT_CAP * T + 2 * T);
    } finally { clearInterval(keepBusy); }

    const silent = setup();
    silent.progress[0] = performance.now() - 3 * T; // it worked once, not lately
    silent.m.start(silent.bucket, 1);
    await sleep(2 * T);
    expect(silent.m.timeouts).toBe(1);
    expect(silent.m.extended).toBe(0);
  });

  it('counts a late hand-over: packets as migration_late of the old owner, flows and sockets to the current owner', async () => {
    const { d, m, sent, sinks, bucket } = setup();
    m.start(bucket, 1);
    d.dispatch(0, Buffer.from('held'), '127.0.0.1', 'IPv4', PORT);
    await sleep(2 * T);
    expect(m.timeouts).toBe(1);
    expect(d.table.owner[bucket]).toBe(1);
    expect(sinks[1]!.payloads()).toEqual(['held']);
    expect(sent.filter((s) => s.msg.t === 'own').map((s) => s.lane)).toEqual([1]);
    const epoch = m.recent[0]!.epoch;
    const { socket, closed } = await udpSocket();
    m.onReleased(0, { bucket, epoch, flows: [flow(1, 0), flow(2)], frames: frames(bucket, ['a', 'b', 'c']), sockets: 1 });
    expect(m.lateReleases).toBe(1);
    expect(m.lateDropped[0]).toBe(3);
    expect(sinks[1]!.payloads()).toEqual(['held']); // not delivered out of order
    expect(sent.some((s) => s.msg.t === 'import')).toBe(false); // waits for the socket handle
    m.onReleasedSocket(0, { bucket, epoch, index: 0 }, socket);
    const imp = sent.find((s) => s.msg.t === 'import')!;
    expect(imp.lane).toBe(1);
    expect(imp.msg).toMatchObject({ t: 'import', bucket, epoch, sockets: 1, late: true });
    const handed = sent.find((s) => s.msg.t === 'import-socket')!;
    expect(handed.handle).toBe(socket);
    await sleep(10);
    expect(closed()).toBe(true); // passed on, then closed here
    m.onImported(1, { bucket, epoch, imported: 1, skipped: 1 });
    expect([m.lateFlowsImported, m.lateFlowsLost]).toEqual([1, 1]);
    // The identity of the primary is untouched: the late packets had been dispatched to worker 0 before.
    expect(d.droppedTotal()).toBe(0);
  });

  it('counts a late hand-over lost, closing its sockets, when the bucket is moving again', async () => {
    const { m, sent, bucket } = setup();
    m.start(bucket, 1);
    await sleep(2 * T);
    const epoch = m.recent[0]!.epoch;
    expect(m.start(bucket, 0)).toBe(true); // moving again, back to worker 0
    const { socket, closed } = await udpSocket();
    m.onReleased(0, { bucket, epoch, flows: [flow(1, 0), flow(2)], frames: frames(bucket, ['a']), sockets: 1 });
    m.onReleasedSocket(0, { bucket, epoch, index: 0 }, socket);
    expect(sent.some((s) => s.msg.t === 'import')).toBe(false);
    expect(m.lateFlowsLost).toBe(2);
    expect(m.lateDropped[0]).toBe(1);
    await sleep(10);
    expect(closed()).toBe(true);
    m.abortAll();
  });

  it('on a timeout after the hand-over came back, delivers its packets before the held ones; late sockets follow as a late import', async () => {
    const { d, m, sent, sinks, bucket } = setup();
    m.start(bucket, 1);
    const epoch = 1;
    m.onReleased(0, { bucket, epoch, flows: [flow(1, 0)], frames: frames(bucket, ['1', '2']), sockets: 1 });
    d.dispatch(0, Buffer.from('3'), '127.0.0.1', 'IPv4', PORT);
    await sleep(2 * T); // the socket handle never came in time
    expect(m.timeouts).toBe(1);
    expect(sinks[1]!.payloads()).toEqual(['1', '2', '3']);
    expect(m.lateDropped[0]).toBe(0);
    const { socket } = await udpSocket();
    m.onReleasedSocket(0, { bucket, epoch, index: 0 }, socket);
    expect(sent.find((s) => s.msg.t === 'import')?.msg).toMatchObject({ late: true, bucket, epoch });
    expect(sent.find((s) => s.msg.t === 'import-socket')?.handle).toBe(socket);
  });
});
