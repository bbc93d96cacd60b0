/**
 * The binary frame format between the primary and a worker. This is the only file that knows byte offsets.
 *
 * The primary writes frames back to back into a worker's channel (an extra stdio pipe, fd 4); the worker
 * reads a byte stream and cuts it into frames. All integers are little-endian.
 *
 *   offset size field
 *   0      4    frameLen   total bytes of this frame, header included
 *   4      1    kind       FRAME_PACKET | FRAME_RELEASE | FRAME_CLOCK
 *   5      1    family     4 or 6 (PACKET)
 *   6      1    listener   index of the front socket the datagram arrived on (PACKET)
 *   7      1    flags      reserved, 0
 *   8      2    srcPort    client's UDP port (PACKET)
 *   10     2    reserved
 *   12     4    bucket     hash bucket (PACKET, RELEASE)
 *   16     4    hash       32-bit xxHash of the 4-tuple (PACKET); table epoch (RELEASE)
 *   20     16   srcAddr    client address: IPv4 in the first 4 bytes, IPv6 all 16 (PACKET);
 *                          CLOCK: a float64 wall-clock time in ms (performance.timeOrigin + now()) at offset 20
 *   36     ...  payload    the datagram (PACKET)
 */

export const FRAME_HEADER_BYTES = 36;

export const FRAME_PACKET = 1;
/** "You have now seen the last packet of this bucket": the worker hands the bucket over (migration). */
export const FRAME_RELEASE = 2;
/** A batch timestamp, written once per flushed batch, for dispatch latency. */
export const FRAME_CLOCK = 3;

export const OFF_LEN = 0;
export const OFF_KIND = 4;
export const OFF_FAMILY = 5;
export const OFF_LISTENER = 6;
export const OFF_PORT = 8;
export const OFF_BUCKET = 12;
export const OFF_HASH = 16;
export const OFF_EPOCH = 16;
export const OFF_ADDR = 20;
export const OFF_CLOCK_MS = 20;

/** Largest frame: a 65,535-byte datagram (IPv6 can carry more than IPv4's 65,507) plus the header. */
export const MAX_FRAME_BYTES = FRAME_HEADER_BYTES + 65_535;

/**
 * Writes a PACKET frame at `off`; `addr` holds the client address (4 or 16 bytes used).
 * Returns the offset just past the frame. The caller guarantees room.
 */
export function writePacketFrame(
  buf: Buffer, off: number, family: number, listener: number, port: number,
  bucket: number, hash: number, addr: Uint8Array, payload: Buffer,
): number {
  // Byte stores instead of Buffer.write*: no argument checks, and this runs once per packet.
  const len = payload.length;
  const total = FRAME_HEADER_BYTES + len;
  buf[off] = total; buf[off + 1] = total >>> 8; buf[off + 2] = total >>> 16; buf[off + 3] = total >>> 24;
  buf[off + OFF_KIND] = FRAME_PACKET;
  buf[off + OFF_FAMILY] = family;
  buf[off + OFF_LISTENER] = listener;
  buf[off + 7] = 0;
  buf[off + OFF_PORT] = port; buf[off + OFF_PORT + 1] = port >>> 8;
  buf[off + 10] = 0; buf[off + 11] = 0;
  buf[off + OFF_BUCKET] = bucket; buf[off + OFF_BUCKET + 1] = bucket >>> 8;
  buf[off + OFF_BUCKET + 2] = bucket >>> 16; buf[off + OFF_BUCKET + 3] = bucket >>> 24;
  buf[off + OFF_HASH] = hash; buf[off + OFF_HASH + 1] = hash >>> 8;
  buf[off + OFF_HASH + 2] = hash >>> 16; buf[off + OFF_HASH + 3] = hash >>> 24;
  // 16 bytes of address; for IPv4 the last 12 are whatever the caller's array holds (zeros: see Dispatcher).
  buf.set(addr, off + OFF_ADDR);
  buf.set(payload, off + FRAME_HEADER_BYTES);
  return off + total;
}

export function writeReleaseFrame(buf: Buffer, off: number, bucket: number, epoch: number): number {
  buf.fill(0, off, off + FRAME_HEADER_BYTES);
  buf.writeUInt32LE(FRAME_HEADER_BYTES, off);
  buf[off + OFF_KIND] = FRAME_RELEASE;
  buf.writeUInt32LE(bucket, off + OFF_BUCKET);
  buf.writeUInt32LE(epoch >>> 0, off + OFF_EPOCH);
  return off + FRAME_HEADER_BYTES;
}

export function writeClockFrame(buf: Buffer, off: number, wallMs: number): number {
  buf.fill(0, off, off + FRAME_HEADER_BYTES);
  buf.writeUInt32LE(FRAME_HEADER_BYTES, off);
  buf[off + OFF_KIND] = FRAME_CLOCK;
  buf.writeDoubleLE(wallMs, off + OFF_CLOCK_MS);
  return off + FRAME_HEADER_BYTES;
}

export function frameLength(buf: Buffer, off: number): number { return buf.readUInt32LE(off + OFF_LEN); }
export function frameKind(buf: Buffer, off: number): number { return buf[off + OFF_KIND]!; }
export function frameFamily(buf: Buffer, off: number): number { return buf[off + OFF_FAMILY]!; }
export function frameListener(buf: Buffer, off: number): number { return buf[off + OFF_LISTENER]!; }
export function framePort(buf: Buffer, off: number): number { return buf.readUInt16LE(off + OFF_PORT); }
export function frameBucket(buf: Buffer, off: number): number { return buf.readUInt32LE(off + OFF_BUCKET); }
export function frameHash(buf: Buffer, off: number): number { return buf.readUInt32LE(off + OFF_HASH); }
export function frameEpoch(buf: Buffer, off: number): number { return buf.readUInt32LE(off + OFF_EPOCH); }
export function frameClockMs(buf: Buffer, off: number): number { return buf.readDoubleLE(off + OFF_CLOCK_MS); }
/** Offset of the 16-byte address field of the frame at `off`. */
export function frameAddrOffset(off: number): number { return off + OFF_ADDR; }
export function framePayloadOffset(off: number): number { return off + FRAME_HEADER_BYTES; }

/**
 * Cuts a byte stream into frames. Frames wholly inside a chunk are passed as (chunk, offset) without copying;
 * only a frame split across chunks is copied once into a buffer of its own.
 */
export class FrameReader {
  private pending: Buffer | null = null;
  private pendingLen = 0;
  /** Frames whose length field is impossible; the stream is then out of sync and the rest of the chunk is dropped. */
  malformed = 0;

  constructor(private readonly onFrame: (buf: Buffer, off: number, len: number) => void) {}

  push(chunk: Buffer): void {
    let off = 0;
    const end = chunk.length;
    if (this.pending !== null) {
      off = this.fillPending(chunk);
      if (this.pending !== null) return;
    }
    while (off < end) {
      if (end - off < 4) { this.startPending(chunk, off, end); return; }
      const len = chunk.readUInt32LE(off);
      if (len < FRAME_HEADER_BYTES || len > MAX_FRAME_BYTES) { this.malformed++; return; }
      if (end - off < len) { this.startPending(chunk, off, end); return; }
      this.onFrame(chunk, off, len);
      off += len;
    }
  }

  private startPending(chunk: Buffer, off: number, end: number): void {
    const buf = Buffer.allocUnsafe(MAX_FRAME_BYTES);
    chunk.copy(buf, 0, off, end);
    this.pending = buf;
    this.pendingLen = end - off;
  }

  /** Completes the pending frame from `chunk`; returns how many bytes of `chunk` it used. */
  private fillPending(chunk: Buffer): number {
    const buf = this.pending!;
    let used = 0;
    if (this.pendingLen < 4) {
      used = Math.min(4 - this.pendingLen, chunk.length);
      chunk.copy(buf, this.pendingLen, 0, used);
      this.pendingLen += used;
      if (this.pendingLen < 4) return used;
    }
    const len = buf.readUInt32LE(0);
    if (len < FRAME_HEADER_BYTES || len > MAX_FRAME_BYTES) {
      this.malformed++;
      this.pending = null;
      this.pendingLen = 0;
      return chunk.length;
    }
    const take = Math.min(len - this.pendingLen, chunk.length - used);
    chunk.copy(buf, this.pendingLen, used, used + take);
    this.pendingLen += take;
    used += take;
    if (this.pendingLen === len) {
      this.pending = null;
      this.pendingLen = 0;
      // The frame's own buffer: queued payload views keep it alive, so it is never reused.
      this.onFrame(buf, 0, len);
    }
    return used;
  }
}

/** Packet frames in a buffer of frames (a hand-over, a shed): control path. */
export function countPackets(frames: Buffer): number {
  let n = 0;
  for (let off = 0; off + FRAME_HEADER_BYTES <= frames.length;) {
    const len = frameLength(frames, off);
    if (len < FRAME_HEADER_BYTES) break;
    if (frameKind(frames, off) === FRAME_PACKET) n++;
    off += len;
  }
  return n;
}
