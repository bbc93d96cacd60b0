/**
 * Address strings for replies, without one string per flow. `dgram.send` wants the client's address as a
 * string; keeping one per flow cost ~32 bytes of heap and one more GC-traced object per flow, and most flows
 * share their address with many others (a client's ports, a NAT). A direct-mapped cache keyed by the address
 * bytes keeps the strings of recently used addresses; a miss formats the address (a short-lived string).
 * Fixed size, typed arrays plus one string array sized at start.
 */
import { formatIPv4, formatIPv6 } from './tuple.js';

/** Entries: a power of two. 4096 distinct client addresses stay formatted; beyond that, a miss costs one format. */
const SLOTS = 4096;
const SHIFT = 32 - 12;

export class AddressText {
  /** Per slot: 0 empty, 4 or 6; then the address as four 32-bit words (IPv4: the first word only). */
  private readonly fam = new Uint8Array(SLOTS);
  private readonly words = new Int32Array(SLOTS * 4);
  private readonly text: string[] = new Array<string>(SLOTS).fill('');
  hits = 0;
  misses = 0;

  /** The string form of the address at `b[off]` (4 bytes for family 4, else 16). */
  of(b: Uint8Array, off: number, family: number): string {
    const w0 = b[off]! | (b[off + 1]! << 8) | (b[off + 2]! << 16) | (b[off + 3]! << 24);
    if (family === 4) {
      const s = Math.imul(w0, 0x9e3779b1) >>> SHIFT;
      if (this.fam[s] === 4 && this.words[s * 4] === w0) { this.hits++; return this.text[s]!; }
      this.misses++;
      const t = formatIPv4(b, off);
      this.fam[s] = 4; this.words[s * 4] = w0; this.text[s] = t;
      return t;
    }
    const w1 = b[off + 4]! | (b[off + 5]! << 8) | (b[off + 6]! << 16) | (b[off + 7]! << 24);
    const w2 = b[off + 8]! | (b[off + 9]! << 8) | (b[off + 10]! << 16) | (b[off + 11]! << 24);
    const w3 = b[off + 12]! | (b[off + 13]! << 8) | (b[off + 14]! << 16) | (b[off + 15]! << 24);
    const s = Math.imul(w0 ^ Math.imul(w1, 0x85ebca6b) ^ Math.imul(w2, 0xc2b2ae35) ^ Math.imul(w3, 0x27d4eb2f), 0x9e3779b1) >>> SHIFT;
    const k = s * 4, w = this.words;
    if (this.fam[s] === 6 && w[k] === w0 && w[k + 1] === w1 && w[k + 2] === w2 && w[k + 3] === w3) { this.hits++; return this.text[s]!; }
    this.misses++;
    const t = formatIPv6(b, off);
    this.fam[s] = 6; w[k] = w0; w[k + 1] = w1; w[k + 2] = w2; w[k + 3] = w3; this.text[s] = t;
    return t;
  }
}
