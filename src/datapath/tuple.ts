/**
 * 4-tuple handling on the packet path: turning Node's `rinfo.address` string into bytes without allocating,
 * hashing the tuple, and turning bytes back into an address string (once per new flow, in the worker).
 *
 * Hash input layout (fixed: the bucket of a tuple must not change across releases):
 *   IPv4: srcAddr(4) dstAddr(4) srcPort(2, big-endian) dstPort(2, big-endian)          = 12 bytes
 *   IPv6: srcAddr(16) dstAddr(16) srcPort(2, big-endian) dstPort(2, big-endian)        = 36 bytes
 * hashed with xxHash32 (xxhash-wasm `h32Raw`) and seed HASH_SEED.
 */
import xxhash from 'xxhash-wasm';

/** 'flow' in ASCII. Changing it remaps every flow to a different bucket. */
export const HASH_SEED = 0x666c6f77;

export type RawHasher = (input: Uint8Array, seed?: number) => number;

let h32Raw: RawHasher | null = null;

/** Loads the wasm hasher once per process; the packet path then calls it synchronously. */
export async function loadHasher(): Promise<RawHasher> {
  if (h32Raw === null) h32Raw = (await xxhash()).h32Raw;
  return h32Raw;
}

/**
 * Parses a dotted-quad IPv4 string into 4 bytes at `out[off..off+4]`. Returns false if it is not one.
 * No allocation: walks char codes.
 */
export function parseIPv4Into(s: string, out: Uint8Array, off: number): boolean {
  let part = 0, digits = 0, idx = 0;
  const n = s.length;
  for (let i = 0; i < n; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 /* . */) {
      if (digits === 0 || idx === 3) return false;
      out[off + idx++] = part;
      part = 0; digits = 0;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      if (part > 255 || ++digits > 3) return false;
    } else {
      return false;
    }
  }
  if (digits === 0 || idx !== 3) return false;
  out[off + 3] = part;
  return true;
}

function hexVal(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/**
 * Parses an IPv6 literal (with `::` compression, an embedded IPv4 tail, and an optional `%zone` which is
 * ignored) into 16 bytes at `out[off..off+16]`. Returns false if it is not one. No allocation.
 */
export function parseIPv6Into(s: string, out: Uint8Array, off: number): boolean {
  let n = s.length;
  const pct = s.indexOf('%');
  if (pct >= 0) n = pct;
  let w = 0; // 16-bit groups written
  let gap = -1; // group index where '::' was
  let i = 0;
  if (n >= 2 && s.charCodeAt(0) === 58 && s.charCodeAt(1) === 58) { gap = 0; i = 2; if (n === 2) { out.fill(0, off, off + 16); return true; } }
  else if (n > 0 && s.charCodeAt(0) === 58) return false;
  while (i < n) {
    if (w >= 8) return false;
    // Find the extent of this group.
    let j = i, val = 0, isV4 = false;
    while (j < n) {
      const c = s.charCodeAt(j);
      if (c === 58) break;
      if (c === 46) { isV4 = true; break; }
      const h = hexVal(c);
      if (h < 0 || j - i >= 4) return false;
      val = (val << 4) | h;
      j++;
    }
    if (isV4) {
      if (w > 6) return false;
      if (!parseIPv4Into(s.slice(i, n), out, off + w * 2)) return false; // rare path (mapped addresses)
      w += 2;
      i = n;
      break;
    }
    if (j === i) return false;
    out[off + w * 2] = val >>> 8;
    out[off + w * 2 + 1] = val & 0xff;
    w++;
    if (j === n) { i = n; break; }
    // s[j] is ':'
    if (j + 1 < n && s.charCodeAt(j + 1) === 58) {
      if (gap >= 0) return false;
      gap = w;
      i = j + 2;
      if (i === n) break;
    } else {
      i = j + 1;
      if (i === n) return false;
    }
  }
  if (gap < 0) return w === 8;
  if (w === 8) return false;
  // Move the groups after the gap to the end, zero the middle.
  const tail = w - gap;
  for (let k = tail - 1; k >= 0; k--) {
    const from = off + (gap + k) * 2, to = off + (8 - tail + k) * 2;
    out[to] = out[from]!; out[to + 1] = out[from + 1]!;
  }
  out.fill(0, off + gap * 2, off + (8 - tail) * 2);
  return true;
}

/** Formats 4 bytes as dotted quad. Allocates: call once per flow, not per packet. */
export function formatIPv4(b: Uint8Array, off: number): string {
  return `${b[off]}.${b[off + 1]}.${b[off + 2]}.${b[off + 3]}`;
}

/** Formats 16 bytes as a canonical (RFC 5952) IPv6 string. Allocates: once per flow. */
export function formatIPv6(b: Uint8Array, off: number): string {
  const g: number[] = [];
  for (let i = 0; i < 8; i++) g.push((b[off + i * 2]! << 8) | b[off + i * 2 + 1]!);
  // IPv4-mapped: ::ffff:a.b.c.d
  if (g[0] === 0 && g[1] === 0 && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0xffff) {
    return `::ffff:${formatIPv4(b, off + 12)}`;
  }
  let bestStart = -1, bestLen = 0;
  for (let i = 0; i < 8;) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen && j - i >= 2) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = (x: number) => x.toString(16);
  if (bestStart < 0) return g.map(hex).join(':');
  const head = g.slice(0, bestStart).map(hex).join(':');
  const tail = g.slice(bestStart + bestLen).map(hex).join(':');
  return `${head}::${tail}`;
}

/**
 * Writes the hash input of a tuple into a scratch array. `src` and `dst` address bytes are read from
 * `srcBytes[srcOff..]` and `dstBytes`; returns nothing: the scratch is laid out as described at the top.
 */
export function fillTuple4(scratch: Uint8Array, srcPort: number, dst: Uint8Array, dstPort: number): void {
  // scratch[0..4] already holds the source address (the parser wrote it there).
  scratch[4] = dst[0]!; scratch[5] = dst[1]!; scratch[6] = dst[2]!; scratch[7] = dst[3]!;
  scratch[8] = srcPort >>> 8; scratch[9] = srcPort & 0xff;
  scratch[10] = dstPort >>> 8; scratch[11] = dstPort & 0xff;
}

export function fillTuple6(scratch: Uint8Array, srcPort: number, dst: Uint8Array, dstPort: number): void {
  // scratch[0..16] already holds the source address.
  scratch.set(dst, 16);
  scratch[32] = srcPort >>> 8; scratch[33] = srcPort & 0xff;
  scratch[34] = dstPort >>> 8; scratch[35] = dstPort & 0xff;
}

/** Bytes of a local (destination) address for hashing: 4 bytes for IPv4, 16 for IPv6. */
export function addressBytes(address: string, family: 4 | 6): Uint8Array {
  const out = new Uint8Array(family === 4 ? 4 : 16);
  const ok = family === 4 ? parseIPv4Into(address, out, 0) : parseIPv6Into(address, out, 0);
  if (!ok) throw new Error(`not an IPv${family} address: ${address}`);
  return out;
}

/**
 * Hashes a tuple given as strings (tests, tools, the "where would this flow go" simulator). Same result as
 * the packet path.
 */
export function hashTupleStrings(hasher: RawHasher, srcAddr: string, srcPort: number, dstAddr: string, dstPort: number): number {
  const v4 = srcAddr.indexOf(':') < 0;
  if (v4) {
    const s = new Uint8Array(12);
    if (!parseIPv4Into(srcAddr, s, 0)) throw new Error(`bad address ${srcAddr}`);
    fillTuple4(s, srcPort, addressBytes(dstAddr, 4), dstPort);
    return hasher(s, HASH_SEED) >>> 0;
  }
  const s = new Uint8Array(36);
  if (!parseIPv6Into(srcAddr, s, 0)) throw new Error(`bad address ${srcAddr}`);
  fillTuple6(s, srcPort, addressBytes(dstAddr, 6), dstPort);
  return hasher(s, HASH_SEED) >>> 0;
}
