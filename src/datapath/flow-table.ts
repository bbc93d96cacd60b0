/**
 * A worker's flow table: fixed capacity, typed arrays sized at start, open addressing with linear probing
 * and backward-shift deletion, keyed by (listener, family, source address, source port) with the tuple's
 * 32-bit hash carried in from the primary. Flows are also kept in one doubly linked list per bucket, so the
 * flows of a bucket can be swept, exported or dropped without scanning the table.
 */
import { frameAddrOffset, frameBucket, frameFamily, frameHash, frameListener, framePort } from './frame.js';

const EMPTY = -1;

/**
 * One flow's record: 64 bytes, one cache line, so a lookup touches its slot and one line, not one line per
 * field array (measured: the per-field layout took ~8 cache misses per packet at 1M flows). 32-bit words:
 */
const STRIDE = 16;
const W_HASH = 0;
/** port | family << 16 | listener << 24 */
const W_PFL = 1;
/** 16 address bytes: words 2..5 (IPv4: the first 4 bytes). */
const W_ADDR = 2;
const W_BUCKET = 6;
const W_NEXT = 7;
const W_PREV = 8;
/** float64 index within the record (words 10..11 and 12..13). */
const D_LAST_SEEN = 5;
const D_PACKETS = 6;
/** Bytes into a record of the address. */
export const ADDR_BYTE = W_ADDR * 4;

export class FlowTable {
  readonly capacity: number;
  size = 0;

  /** The records, as words, float64s and bytes. */
  private readonly w: Uint32Array;
  private readonly wi: Int32Array;
  private readonly d: Float64Array;
  /** Bytes of the records: flow f's address is at f * 64 + ADDR_BYTE (see addrOffset). */
  readonly bytes: Uint8Array;

  readonly bucketHead: Int32Array;
  readonly bucketCount: Uint32Array;

  private readonly slots: Int32Array;
  private readonly slotShift: number;
  private readonly slotMask: number;
  private readonly freeList: Int32Array;
  private freeTop: number;

  constructor(capacity: number, buckets: number) {
    this.capacity = capacity;
    const records = new ArrayBuffer(capacity * STRIDE * 4);
    this.w = new Uint32Array(records);
    this.wi = new Int32Array(records);
    this.d = new Float64Array(records);
    this.bytes = new Uint8Array(records);
    this.bucketHead = new Int32Array(buckets).fill(EMPTY);
    this.bucketCount = new Uint32Array(buckets);
    // Load factor at most 1/2.
    let bits = 1;
    while ((1 << bits) < capacity * 2) bits++;
    this.slots = new Int32Array(1 << bits).fill(EMPTY);
    this.slotShift = 32 - bits;
    this.slotMask = (1 << bits) - 1;
    this.freeList = new Int32Array(capacity);
    for (let i = 0; i < capacity; i++) this.freeList[i] = capacity - 1 - i;
    this.freeTop = capacity;
  }

  hashOf(id: number): number { return this.w[id * STRIDE + W_HASH]!; }
  portOf(id: number): number { return this.w[id * STRIDE + W_PFL]! & 0xffff; }
  familyOf(id: number): number { return (this.w[id * STRIDE + W_PFL]! >>> 16) & 0xff; }
  listenerOf(id: number): number { return this.w[id * STRIDE + W_PFL]! >>> 24; }
  bucketOf(id: number): number { return this.w[id * STRIDE + W_BUCKET]!; }
  /** Offset in `bytes` of the flow's 16 address bytes. */
  addrOffset(id: number): number { return id * STRIDE * 4 + ADDR_BYTE; }
  /** Coarse worker clock (ms) at the flow's last packet. */
  lastSeenOf(id: number): number { return this.d[id * (STRIDE / 2) + D_LAST_SEEN]!; }
  packetsOf(id: number): number { return this.d[id * (STRIDE / 2) + D_PACKETS]!; }
  setPackets(id: number, n: number): void { this.d[id * (STRIDE / 2) + D_PACKETS] = n; }
  /** A packet of the flow is served now. */
  touch(id: number, nowMs: number): void {
    const k = id * (STRIDE / 2);
    this.d[k + D_LAST_SEEN] = nowMs;
    this.d[k + D_PACKETS]!++;
  }

  /**
   * The home slot. The low bits of a worker's hashes are its buckets' numbers, which cluster; Fibonacci
   * hashing takes the high bits of a multiply instead.
   */
  private home(h: number): number {
    return bits32(Math.imul(h, 0x9e3779b1)) >>> this.slotShift;
  }

  private matches(id: number, buf: Buffer, off: number, h: number): boolean {
    const w = this.w, r = id * STRIDE;
    if (w[r + W_HASH] !== h) return false;
    const fam = frameFamily(buf, off);
    if (w[r + W_PFL] !== (framePort(buf, off) | (fam << 16) | (frameListener(buf, off) << 24)) >>> 0) return false;
    const a = frameAddrOffset(off), base = r * 4 + ADDR_BYTE, n = fam === 4 ? 4 : 16;
    const bytes = this.bytes;
    for (let i = 0; i < n; i++) if (bytes[base + i] !== buf[a + i]) return false;
    return true;
  }

  /** The flow of the PACKET frame at `buf[off]`, or -1. */
  lookup(buf: Buffer, off: number): number {
    const h = frameHash(buf, off);
    let i = this.home(h);
    const slots = this.slots, mask = this.slotMask;
    for (;;) {
      const id = slots[i]!;
      if (id === EMPTY) return EMPTY;
      if (this.matches(id, buf, off, h)) return id;
      i = (i + 1) & mask;
    }
  }

  /** Adds the flow of the PACKET frame at `buf[off]` (caller checked it is absent). Returns its id or -1 when full. */
  insert(buf: Buffer, off: number, nowMs: number): number {
    if (this.freeTop === 0) return EMPTY;
    const id = this.freeList[--this.freeTop]!;
    const h = frameHash(buf, off);
    const w = this.w, r = id * STRIDE;
    const fam = frameFamily(buf, off);
    w[r + W_HASH] = h;
    w[r + W_PFL] = framePort(buf, off) | (fam << 16) | (frameListener(buf, off) << 24);
    const a = frameAddrOffset(off), bytes = this.bytes, base = r * 4 + ADDR_BYTE;
    for (let i = 0; i < 16; i++) bytes[base + i] = buf[a + i]!;
    const b = frameBucket(buf, off);
    w[r + W_BUCKET] = b;
    const k = id * (STRIDE / 2);
    this.d[k + D_LAST_SEEN] = nowMs;
    this.d[k + D_PACKETS] = 0;
    // Link into the bucket's list.
    const head = this.bucketHead[b]!;
    const wi = this.wi;
    wi[r + W_NEXT] = head;
    wi[r + W_PREV] = EMPTY;
    if (head !== EMPTY) wi[head * STRIDE + W_PREV] = id;
    this.bucketHead[b] = id;
    this.bucketCount[b]!++;
    let i = this.home(h);
    while (this.slots[i] !== EMPTY) i = (i + 1) & this.slotMask;
    this.slots[i] = id;
    this.size++;
    return id;
  }

  /** Inserts a flow from its key fields (an imported flow). Returns its id, or -1 when full. */
  insertKey(h: number, port: number, family: number, listener: number, addr16: Uint8Array, bucket: number, nowMs: number): number {
    const tmp = Buffer.alloc(36);
    tmp.writeUInt32LE(36, 0);
    tmp[5] = family; tmp[6] = listener;
    tmp.writeUInt16LE(port, 8);
    tmp.writeUInt32LE(bucket, 12);
    tmp.writeUInt32LE(h >>> 0, 16);
    tmp.set(addr16.subarray(0, 16), 20);
    const existing = this.lookup(tmp, 0);
    if (existing !== EMPTY) return existing;
    return this.insert(tmp, 0, nowMs);
  }

  remove(id: number): void {
    // Find the slot.
    const mask = this.slotMask, slots = this.slots;
    let i = this.home(this.hashOf(id));
    while (slots[i] !== id) {
      if (slots[i] === EMPTY) throw new Error(`flow ${id} not in table`);
      i = (i + 1) & mask;
    }
    // Backward-shift deletion keeps probe sequences intact without tombstones.
    let j = i;
    for (;;) {
      j = (j + 1) & mask;
      const other = slots[j]!;
      if (other === EMPTY) break;
      const k = this.home(this.hashOf(other));
      const between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!between) { slots[i] = other; i = j; }
    }
    slots[i] = EMPTY;
    // Unlink from the bucket's list.
    const wi = this.wi, r = id * STRIDE;
    const b = this.w[r + W_BUCKET]!, next = wi[r + W_NEXT]!, prev = wi[r + W_PREV]!;
    if (prev !== EMPTY) wi[prev * STRIDE + W_NEXT] = next; else this.bucketHead[b] = next;
    if (next !== EMPTY) wi[next * STRIDE + W_PREV] = prev;
    wi[r + W_NEXT] = wi[r + W_PREV] = EMPTY;
    this.bucketCount[b]!--;
    this.freeList[this.freeTop++] = id;
    this.size--;
  }

  /** Next flow in the same bucket, or -1. */
  nextInBucket(id: number): number {
    return this.wi[id * STRIDE + W_NEXT]!;
  }

  /** Copies a flow's 16 address bytes (for export). */
  addressOf(id: number): Uint8Array {
    const base = this.addrOffset(id);
    return this.bytes.slice(base, base + 16);
  }
}

function bits32(x: number): number {
  return x >>> 0;
}
