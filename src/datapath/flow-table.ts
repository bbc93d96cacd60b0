/**
 * A worker's flow table: fixed capacity, typed arrays sized at start, open addressing with linear probing
 * and backward-shift deletion, keyed by (listener, family, source address, source port) with the tuple's
 * 32-bit hash carried in from the primary. Flows are also kept in one doubly linked list per bucket, so the
 * flows of a bucket can be swept, exported or dropped without scanning the table.
 */
import { frameAddrOffset, frameBucket, frameFamily, frameHash, frameListener, framePort } from './frame.js';

const EMPTY = -1;

export class FlowTable {
  readonly capacity: number;
  size = 0;

  readonly hash: Uint32Array;
  readonly port: Uint16Array;
  readonly family: Uint8Array;
  readonly listener: Uint8Array;
  /** 16 bytes per flow. */
  readonly addr: Uint8Array;
  readonly bucket: Uint32Array;
  /** Coarse worker clock (ms) at the flow's last packet. */
  readonly lastSeenMs: Float64Array;
  readonly packets: Float64Array;

  readonly bucketHead: Int32Array;
  readonly bucketCount: Uint32Array;
  private readonly bucketNext: Int32Array;
  private readonly bucketPrev: Int32Array;

  private readonly slots: Int32Array;
  private readonly slotShift: number;
  private readonly slotMask: number;
  private readonly freeList: Int32Array;
  private freeTop: number;

  constructor(capacity: number, buckets: number) {
    this.capacity = capacity;
    this.hash = new Uint32Array(capacity);
    this.port = new Uint16Array(capacity);
    this.family = new Uint8Array(capacity);
    this.listener = new Uint8Array(capacity);
    this.addr = new Uint8Array(capacity * 16);
    this.bucket = new Uint32Array(capacity);
    this.lastSeenMs = new Float64Array(capacity);
    this.packets = new Float64Array(capacity);
    this.bucketHead = new Int32Array(buckets).fill(EMPTY);
    this.bucketCount = new Uint32Array(buckets);
    this.bucketNext = new Int32Array(capacity).fill(EMPTY);
    this.bucketPrev = new Int32Array(capacity).fill(EMPTY);
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

  /**
   * The home slot. The low bits of a worker's hashes are its buckets' numbers, which cluster; Fibonacci
   * hashing takes the high bits of a multiply instead.
   */
  private home(h: number): number {
    return bits32(Math.imul(h, 0x9e3779b1)) >>> this.slotShift;
  }

  private matches(id: number, buf: Buffer, off: number, h: number): boolean {
    if (this.hash[id] !== h || this.port[id] !== framePort(buf, off) || this.listener[id] !== frameListener(buf, off)) return false;
    const fam = frameFamily(buf, off);
    if (this.family[id] !== fam) return false;
    const a = frameAddrOffset(off), base = id * 16, n = fam === 4 ? 4 : 16;
    const addr = this.addr;
    for (let i = 0; i < n; i++) if (addr[base + i] !== buf[a + i]) return false;
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
    this.hash[id] = h;
    this.port[id] = framePort(buf, off);
    this.family[id] = frameFamily(buf, off);
    this.listener[id] = frameListener(buf, off);
    const a = frameAddrOffset(off);
    this.addr.set(buf.subarray(a, a + 16), id * 16);
    const b = frameBucket(buf, off);
    this.bucket[id] = b;
    this.lastSeenMs[id] = nowMs;
    this.packets[id] = 0;
    // Link into the bucket's list.
    const head = this.bucketHead[b]!;
    this.bucketNext[id] = head;
    this.bucketPrev[id] = EMPTY;
    if (head !== EMPTY) this.bucketPrev[head] = id;
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
    let i = this.home(this.hash[id]!);
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
      const k = this.home(this.hash[other]!);
      const between = i <= j ? (i < k && k <= j) : (i < k || k <= j);
      if (!between) { slots[i] = other; i = j; }
    }
    slots[i] = EMPTY;
    // Unlink from the bucket's list.
    const b = this.bucket[id]!, next = this.bucketNext[id]!, prev = this.bucketPrev[id]!;
    if (prev !== EMPTY) this.bucketNext[prev] = next; else this.bucketHead[b] = next;
    if (next !== EMPTY) this.bucketPrev[next] = prev;
    this.bucketNext[id] = this.bucketPrev[id] = EMPTY;
    this.bucketCount[b]!--;
    this.freeList[this.freeTop++] = id;
    this.size--;
  }

  /** Next flow in the same bucket, or -1. */
  nextInBucket(id: number): number {
    return this.bucketNext[id]!;
  }

  /** Copies a flow's 16 address bytes (for export). */
  addressOf(id: number): Uint8Array {
    return this.addr.slice(id * 16, id * 16 + 16);
  }
}

function bits32(x: number): number {
  return x >>> 0;
}
