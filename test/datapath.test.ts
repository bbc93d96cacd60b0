/**
 * The packet-path building blocks: tuple parsing and hashing (fixed vectors, uniformity), the frame reader,
 * the flow table, and the DRR queue.
 */
import net from 'node:net';
import fc from 'fast-check';
import { beforeAll, describe, expect, it } from 'vitest';
import { Dispatcher, type ChannelSink } from '../src/datapath/dispatcher.js';
import { ENQ_FLOW_FULL, ENQ_OK, ENQ_PUSHED_OUT, FairQueue } from '../src/datapath/fair-queue.js';
import { FlowTable } from '../src/datapath/flow-table.js';
import {
  FRAME_HEADER_BYTES, FRAME_PACKET, FrameReader, frameBucket, frameHash, frameKind, framePort, writePacketFrame,
} from '../src/datapath/frame.js';
import {
  addressBytes, formatIPv6, HASH_SEED, hashTupleStrings, loadHasher, parseIPv4Into, parseIPv6Into, type RawHasher,
} from '../src/datapath/tuple.js';

let hasher: RawHasher;
beforeAll(async () => { hasher = await loadHasher(); });

/** Deterministic PRNG (mulberry32) so statistical tests are repeatable. */
function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

describe('tuple hashing', () => {
  // These vectors fix the tuple -> bucket mapping across releases. Changing the layout or seed breaks them on purpose.
  const VECTORS: [string, number, string, number, number][] = [
    ['127.0.0.1', 5000, '127.0.0.1', 5300, 2024415297],
    ['10.0.0.1', 1, '10.0.0.2', 2, 4015533602],
    ['192.168.1.200', 65535, '127.0.0.1', 53, 3184554347],
    ['::1', 5000, '::1', 5300, 1157194091],
    ['2001:db8::1', 40000, '2001:db8::2', 5060, 1062979618],
    ['::ffff:127.0.0.1', 1234, '::', 5300, 2978271189],
  ];
  it('maps fixed tuples to fixed hashes', () => {
    for (const [sa, sp, da, dp, h] of VECTORS) expect(hashTupleStrings(hasher, sa, sp, da, dp)).toBe(h);
  });

  it('hashes the documented byte layout with the documented seed', () => {
    const bytes = Uint8Array.from([127, 0, 0, 1, 127, 0, 0, 1, 0x13, 0x88, 0x14, 0xb4]);
    expect(hasher(bytes, HASH_SEED) >>> 0).toBe(hashTupleStrings(hasher, '127.0.0.1', 5000, '127.0.0.1', 5300));
    expect(HASH_SEED).toBe(0x666c6f77);
  });

  it('the dispatcher puts a tuple in the same bucket as the reference function', () => {
    const frames: Buffer[] = [];
    const sink: ChannelSink = { write: (b) => { frames.push(Buffer.from(b)); return true; }, writableLength: 0 };
    const d = new Dispatcher({ buckets: 1024, maxWorkers: 1, maxHolds: 1, maxDatagramBytes: 65535, channelLimitBytes: 1 << 30, holdLimit: 10, hasher });
    d.setListeners([{ family: 4, address: addressBytes('127.0.0.1', 4), port: 5300 }]);
    d.table.owner.fill(0);
    d.setSink(0, sink);
    d.dispatch(0, Buffer.from('x'), '127.0.0.1', 'IPv4', 5000);
    d.flushAll();
    const buf = Buffer.concat(frames);
    const seen: number[] = [];
    new FrameReader((b, o) => { if (frameKind(b, o) === FRAME_PACKET) seen.push(frameHash(b, o), frameBucket(b, o), framePort(b, o)); }).push(buf);
    expect(seen).toEqual([2024415297, 2024415297 & 1023, 5000]);
  });

  it('spreads random tuples evenly over 1024 buckets (chi-square)', () => {
    const r = rng(42);
    const B = 1024, N = 204_800;
    const counts = new Float64Array(B);
    const s = new Uint8Array(12);
    for (let i = 0; i < N; i++) {
      const a = (r() * 2 ** 32) >>> 0;
      s[0] = 127; s[1] = (a >>> 16) & 0xff; s[2] = (a >>> 8) & 0xff; s[3] = a & 0xff;
      s[4] = 127; s[5] = 0; s[6] = 0; s[7] = 1;
      const port = 1024 + Math.floor(r() * 64000);
      s[8] = port >>> 8; s[9] = port & 0xff; s[10] = 0x14; s[11] = 0xb4;
      counts[(hasher(s, HASH_SEED) >>> 0) & (B - 1)]!++;
    }
    const expected = N / B;
    let chi = 0;
    for (const c of counts) chi += (c - expected) ** 2 / expected;
    // 1023 degrees of freedom: mean 1023, sd ~45; 1200 is about p = 0.0001.
    expect(chi).toBeLessThan(1200);
    expect(chi).toBeGreaterThan(850); // suspiciously perfect would mean the test measures nothing
  });

  it('source ports alone (one client address) also spread evenly', () => {
    const B = 1024;
    const counts = new Float64Array(B);
    // Every port from 1024 to 65535 once.
    for (let p = 1024; p < 65536; p++) counts[hashTupleStrings(hasher, '127.0.0.1', p, '127.0.0.1', 5300) & (B - 1)]!++;
    const expected = (65536 - 1024) / B;
    let chi = 0;
    for (const c of counts) chi += (c - expected) ** 2 / expected;
    expect(chi).toBeLessThan(1200);
  });
});

describe('address parsing', () => {
  it('parses IPv4 and rejects junk', () => {
    const out = new Uint8Array(4);
    expect(parseIPv4Into('192.168.0.255', out, 0)).toBe(true);
    expect([...out]).toEqual([192, 168, 0, 255]);
    for (const bad of ['', '1.2.3', '1.2.3.4.5', '256.1.1.1', '1..2.3', 'a.b.c.d', '1.2.3.4 ']) expect(parseIPv4Into(bad, out, 0)).toBe(false);
  });

  it('parses every IPv6 form Node produces and formats it back canonically', () => {
    fc.assert(fc.property(fc.ipV6(), (addr) => {
      const out = new Uint8Array(16);
      expect(parseIPv6Into(addr, out, 0)).toBe(true);
      const text = formatIPv6(out, 0);
      expect(net.isIPv6(text)).toBe(true);
      const again = new Uint8Array(16);
      expect(parseIPv6Into(text, again, 0)).toBe(true);
      expect([...again]).toEqual([...out]);
    }), { numRuns: 500 });
    const out = new Uint8Array(16);
    expect(parseIPv6Into('fe80::1%eth0', out, 0)).toBe(true);
    expect(formatIPv6(out, 0)).toBe('fe80::1');
    for (const bad of ['', ':::', '1:2:3:4:5:6:7:8:9', '12345::', '1::2::3', 'g::1']) expect(parseIPv6Into(bad, out, 0)).toBe(false);
  });
});

function packetFrame(port: number, hash: number, bucket: number, payload: Buffer): Buffer {
  const buf = Buffer.alloc(FRAME_HEADER_BYTES + payload.length);
  const addr = new Uint8Array(16); addr[0] = 127; addr[3] = 1;
  writePacketFrame(buf, 0, 4, 0, port, bucket, hash, addr, payload);
  return buf;
}

describe('frame reader', () => {
  it('yields the same frames however the stream is cut', () => {
    const frames = [1, 2, 3, 4, 5].map((i) => packetFrame(1000 + i, i, i, Buffer.alloc(i * 37, i)));
    const stream = Buffer.concat(frames);
    fc.assert(fc.property(fc.array(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 8 }), (cuts) => {
      const points = [...new Set(cuts)].sort((a, b) => a - b);
      const got: string[] = [];
      const reader = new FrameReader((b, o, len) => got.push(b.subarray(o, o + len).toString('hex')));
      let prev = 0;
      for (const p of [...points, stream.length]) { reader.push(stream.subarray(prev, p)); prev = p; }
      expect(got).toEqual(frames.map((f) => f.toString('hex')));
    }));
  });

  it('counts an impossible length as malformed instead of throwing', () => {
    const reader = new FrameReader(() => { throw new Error('no frame expected'); });
    const bad = Buffer.alloc(64);
    bad.writeUInt32LE(5, 0);
    reader.push(bad);
    expect(reader.malformed).toBe(1);
  });
});

describe('flow table', () => {
  it('behaves like a map under random inserts and removes (property)', () => {
    fc.assert(fc.property(fc.array(fc.tuple(fc.boolean(), fc.integer({ min: 0, max: 300 })), { maxLength: 400 }), (ops) => {
      const t = new FlowTable(256, 16);
      const model = new Map<number, number>();
      for (const [add, key] of ops) {
        const frame = packetFrame(key, (key * 2654435761) >>> 0, key & 15, Buffer.alloc(1));
        const id = t.lookup(frame, 0);
        if (add) {
          if (id >= 0) { expect(model.get(key)).toBe(id); continue; }
          expect(model.has(key)).toBe(false);
          const nid = t.insert(frame, 0, 0);
          if (model.size >= 256) { expect(nid).toBe(-1); continue; }
          expect(nid).toBeGreaterThanOrEqual(0);
          model.set(key, nid);
        } else if (id >= 0) {
          t.remove(id);
          model.delete(key);
        } else {
          expect(model.has(key)).toBe(false);
        }
      }
      expect(t.size).toBe(model.size);
      for (const [key, id] of model) expect(t.lookup(packetFrame(key, (key * 2654435761) >>> 0, key & 15, Buffer.alloc(1)), 0)).toBe(id);
      // Bucket lists hold exactly the flows of each bucket.
      let listed = 0;
      for (let b = 0; b < 16; b++) {
        for (let f = t.bucketHead[b]!; f >= 0; f = t.nextInBucket(f)) { expect(t.bucketOf(f)).toBe(b); listed++; }
        expect(t.bucketCount[b]).toBe([...model.keys()].filter((k) => (k & 15) === b).length);
      }
      expect(listed).toBe(model.size);
    }));
  });
});

describe('fair queue (DRR)', () => {
  it('serves flows round-robin by bytes: a heavy flow does not delay light ones', () => {
    const q = new FairQueue(10_000, 100, 5000, 1500);
    const buf = Buffer.alloc(2000);
    for (let i = 0; i < 1000; i++) q.enqueue(0, buf, 0, 1000); // heavy flow: 1000 packets queued first
    for (let f = 1; f <= 50; f++) q.enqueue(f, buf, 0, 100); // 50 light flows, one packet each
    const order: number[] = [];
    q.serve(200, (f) => order.push(f));
    // Every light flow is served within the first round: at most ~2 heavy packets (1500 B quantum) per round.
    const lastLight = Math.max(...[...Array(50).keys()].map((i) => order.indexOf(i + 1)));
    expect(lastLight).toBeGreaterThan(0);
    expect(lastLight).toBeLessThan(60);
    expect(order.filter((f) => f === 0).length).toBeLessThanOrEqual(order.length);
  });

  it('keeps per-flow FIFO order and caps a flow queue', () => {
    const q = new FairQueue(100, 4, 3, 1500);
    const buf = Buffer.alloc(10);
    expect(q.enqueue(1, buf, 0, 1)).toBe(ENQ_OK);
    expect(q.enqueue(1, buf, 1, 1)).toBe(ENQ_OK);
    expect(q.enqueue(1, buf, 2, 1)).toBe(ENQ_OK);
    expect(q.enqueue(1, buf, 3, 1)).toBe(ENQ_FLOW_FULL);
    const offs: number[] = [];
    q.serve(10, (_f, _b, off) => offs.push(off));
    expect(offs).toEqual([0, 1, 2]);
    expect(q.depth).toBe(0);
  });

  it('when full, the heaviest flow loses its oldest packet first', () => {
    const q = new FairQueue(10, 4, 100, 1500);
    const buf = Buffer.alloc(10);
    for (let i = 0; i < 8; i++) q.enqueue(0, buf, i, 1);
    q.enqueue(1, buf, 100, 1);
    q.enqueue(2, buf, 200, 1);
    expect(q.enqueue(3, buf, 300, 1)).toBe(ENQ_PUSHED_OUT);
    const served: [number, number][] = [];
    q.serve(100, (f, _b, off) => served.push([f, off]));
    expect(served.filter(([f]) => f === 0).map(([, o]) => o)).toEqual([1, 2, 3, 4, 5, 6, 7]);
    expect(served.filter(([f]) => f !== 0).map(([f]) => f).sort()).toEqual([1, 2, 3]);
  });

  it('drainFlow hands over a flow\'s packets in order and removes it from service', () => {
    const q = new FairQueue(100, 4, 100, 1500);
    const buf = Buffer.alloc(10);
    for (let i = 0; i < 5; i++) q.enqueue(2, buf, i, 1);
    q.enqueue(1, buf, 9, 1);
    const taken: number[] = [];
    q.drainFlow(2, (_f, _b, off) => taken.push(off));
    expect(taken).toEqual([0, 1, 2, 3, 4]);
    const rest: number[] = [];
    q.serve(100, (f) => rest.push(f));
    expect(rest).toEqual([1]);
  });

  it('drainFlow with a limit takes the oldest packets only; the flow keeps the rest, in order and in service', () => {
    const q = new FairQueue(100, 4, 100, 1500);
    const buf = Buffer.alloc(10);
    for (let i = 0; i < 5; i++) q.enqueue(2, buf, i, 1);
    q.enqueue(1, buf, 9, 1);
    const taken: number[] = [];
    expect(q.drainFlow(2, (_f, _b, off) => taken.push(off), 3)).toBe(3);
    expect(taken).toEqual([0, 1, 2]);
    expect(q.depth).toBe(3);
    expect(q.queued(2)).toBe(2);
    const rest: [number, number][] = [];
    q.serve(100, (f, _b, off) => rest.push([f, off]));
    expect(rest.filter(([f]) => f === 2)).toEqual([[2, 3], [2, 4]]);
    expect(rest.filter(([f]) => f === 1)).toEqual([[1, 9]]);
    expect(q.depth).toBe(0);
    // Then it queues again from empty like any flow.
    q.enqueue(2, buf, 7, 1);
    const again: number[] = [];
    q.serve(100, (_f, _b, off) => again.push(off));
    expect(again).toEqual([7]);
  });
});
