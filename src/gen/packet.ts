/**
 * Wire formats of the generator and the backend simulator. This is the only file that knows byte offsets.
 *
 * Probe header (24 bytes, network byte order), at offset 0 of a plain datagram or offset 12 of an RTP one:
 *
 *   off  size  field
 *     0     4  magic 0x464C5031 ("FLP1"; the digit is the format version)
 *     4     4  runId: random per run; replies carrying another runId are stale (an earlier trial) and ignored
 *     8     4  flowId: 0 .. flows-1, the same in every sender process
 *    12     4  seq: per flow, from 0, +1 per packet
 *    16     8  sendTimeNs: process.hrtime.bigint() at send (CLOCK_MONOTONIC, so comparable between
 *              processes of one machine, not between machines)
 *
 * The rest of the datagram is filler: zero bytes, or 0xFF (G.711 mu-law silence) in an RTP payload.
 * A responder must return the first 24 bytes (36 with RTP) unchanged; anything may follow them.
 *
 * RTP (RFC 3550) fixed header, 12 bytes: V=2, P=0, X=0, CC=0, M=1 on a stream's first packet, PT (0 = PCMU),
 * sequence number (16 bit, +1 per packet), timestamp (+ samples per packet), SSRC (per stream).
 *
 * Backend identity trailer, appended by `flowlb backend --mode echo` to the unchanged request:
 *
 *   [request bytes][NAME, UTF-8, 1..64 bytes][u8 NAME length]["FLBI"]
 *
 * It is read from the end, so the probe header (and an RTP header) keep their offsets, and a reply without
 * a trailer (a plain echo) is told apart by the last four bytes.
 */

export const PROBE_MAGIC = 0x464c5031;
export const PROBE_HEADER_BYTES = 24;
export const RTP_HEADER_BYTES = 12;
/** G.711 at 8000 samples/s in 20 ms packets: 160 one-byte samples. */
export const RTP_DEFAULT_PAYLOAD_BYTES = 160;
export const RTP_DEFAULT_TS_STEP = 160;
export const RTP_DEFAULT_PAYLOAD_TYPE = 0;
export const RTP_DEFAULT_STREAM_PPS = 50;
/** mu-law silence; the RTP payload after the probe header carries it so players hear nothing odd. */
const PCMU_SILENCE = 0xff;

const OFF_MAGIC = 0;
const OFF_RUN = 4;
const OFF_FLOW = 8;
const OFF_SEQ = 12;
const OFF_TIME = 16;

export const IDENTITY_MAGIC = Buffer.from('FLBI', 'latin1');
export const IDENTITY_MAX_NAME_BYTES = 64;
const IDENTITY_MAGIC_U32 = IDENTITY_MAGIC.readUInt32BE(0);

export interface Probe {
  runId: number;
  flowId: number;
  seq: number;
  sendTimeNs: bigint;
}

/** Offset of the probe header in a datagram of the given kind. */
export function probeOffset(rtp: boolean): number {
  return rtp ? RTP_HEADER_BYTES : 0;
}

/**
 * A datagram template: probe magic and runId in place, filler after the header. Each packet copies it
 * and then writes only the per-packet fields, so filling is one memcpy whatever the size.
 */
export function makeTemplate(datagramBytes: number, runId: number, rtp: boolean, payloadType = RTP_DEFAULT_PAYLOAD_TYPE): Buffer {
  const off = probeOffset(rtp);
  if (datagramBytes < off + PROBE_HEADER_BYTES) {
    throw new RangeError(`datagram of ${datagramBytes} bytes cannot hold the ${off + PROBE_HEADER_BYTES}-byte header`);
  }
  const buf = Buffer.alloc(datagramBytes, rtp ? PCMU_SILENCE : 0);
  if (rtp) {
    buf[0] = 0x80; // V=2, no padding, no extension, no CSRC
    buf[1] = payloadType & 0x7f;
  }
  buf.writeUInt32BE(PROBE_MAGIC, off + OFF_MAGIC);
  buf.writeUInt32BE(runId >>> 0, off + OFF_RUN);
  return buf;
}

/** Writes the per-packet probe fields into a copy of a template. */
export function writeProbe(buf: Buffer, off: number, flowId: number, seq: number, sendTimeNs: bigint): void {
  buf.writeUInt32BE(flowId, off + OFF_FLOW);
  buf.writeUInt32BE(seq >>> 0, off + OFF_SEQ);
  buf.writeBigUInt64BE(sendTimeNs, off + OFF_TIME);
}

/** Writes the per-packet RTP fields (the version and payload type come from the template). */
export function writeRtp(buf: Buffer, marker: boolean, seq16: number, timestamp: number, ssrc: number): void {
  buf[1] = marker ? buf[1]! | 0x80 : buf[1]! & 0x7f;
  buf.writeUInt16BE(seq16 & 0xffff, 2);
  buf.writeUInt32BE(timestamp >>> 0, 4);
  buf.writeUInt32BE(ssrc >>> 0, 8);
}

/** True when `buf` holds a probe header of run `runId` at `off`. Cheap enough for every reply. */
export function isProbe(buf: Buffer, off: number, runId: number): boolean {
  return buf.length >= off + PROBE_HEADER_BYTES && buf.readUInt32BE(off + OFF_MAGIC) === PROBE_MAGIC && buf.readUInt32BE(off + OFF_RUN) === runId >>> 0;
}

export function probeFlowId(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off + OFF_FLOW);
}

export function probeSeq(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off + OFF_SEQ);
}

export function probeSendTimeNs(buf: Buffer, off: number): bigint {
  return buf.readBigUInt64BE(off + OFF_TIME);
}

/** Decodes a probe header for tools and tests; null when there is none at `off`. */
export function readProbe(buf: Buffer, off = 0): Probe | null {
  if (buf.length < off + PROBE_HEADER_BYTES || buf.readUInt32BE(off + OFF_MAGIC) !== PROBE_MAGIC) return null;
  return {
    runId: buf.readUInt32BE(off + OFF_RUN),
    flowId: buf.readUInt32BE(off + OFF_FLOW),
    seq: buf.readUInt32BE(off + OFF_SEQ),
    sendTimeNs: buf.readBigUInt64BE(off + OFF_TIME),
  };
}

export interface RtpHeader {
  version: number;
  padding: boolean;
  extension: boolean;
  csrcCount: number;
  marker: boolean;
  payloadType: number;
  seq: number;
  timestamp: number;
  ssrc: number;
  /** Offset of the payload (12 + 4 * CSRC count, ignoring extensions). */
  payloadOffset: number;
}

/** Parses an RTP fixed header; null when the datagram is too short or not version 2. */
export function parseRtp(buf: Buffer): RtpHeader | null {
  if (buf.length < RTP_HEADER_BYTES) return null;
  const b0 = buf[0]!;
  const b1 = buf[1]!;
  const version = b0 >> 6;
  if (version !== 2) return null;
  const csrcCount = b0 & 0x0f;
  return {
    version,
    padding: (b0 & 0x20) !== 0,
    extension: (b0 & 0x10) !== 0,
    csrcCount,
    marker: (b1 & 0x80) !== 0,
    payloadType: b1 & 0x7f,
    seq: buf.readUInt16BE(2),
    timestamp: buf.readUInt32BE(4),
    ssrc: buf.readUInt32BE(8),
    payloadOffset: RTP_HEADER_BYTES + 4 * csrcCount,
  };
}

/** The identity trailer for backend `name` (validated: 1..64 UTF-8 bytes). */
export function encodeIdentityTrailer(name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  if (nameBytes.length < 1 || nameBytes.length > IDENTITY_MAX_NAME_BYTES) {
    throw new RangeError(`backend id must be 1..${IDENTITY_MAX_NAME_BYTES} UTF-8 bytes, got ${nameBytes.length}`);
  }
  return Buffer.concat([nameBytes, Buffer.from([nameBytes.length]), IDENTITY_MAGIC]);
}

/** Length of the identity trailer at the end of `buf`, or 0 when it has none. */
export function identityTrailerBytes(buf: Buffer): number {
  const len = buf.length;
  if (len < 6 || buf.readUInt32BE(len - 4) !== IDENTITY_MAGIC_U32) return 0;
  const nameLen = buf[len - 5]!;
  if (nameLen === 0 || nameLen > IDENTITY_MAX_NAME_BYTES || nameLen + 5 > len) return 0;
  return nameLen + 5;
}

/** The backend name in a reply's identity trailer, or null when the reply has none. */
export function parseIdentityTrailer(buf: Buffer): string | null {
  const trailer = identityTrailerBytes(buf);
  if (trailer === 0) return null;
  return buf.toString('utf8', buf.length - trailer, buf.length - 5);
}
