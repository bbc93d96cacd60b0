/**
 * The built-in `sockperf` handler: answers as `sockperf server` does, so `sockperf ping-pong` (and `under-load`)
 * can measure flowlb itself without a backend behind it.
 *
 * sockperf's message starts with a 14-byte header in network order: sequence number (8 bytes), flags (2 bytes:
 * 1 = sent by the client, 2 = an answer is wanted) and length (4 bytes). The server answers a message that wants
 * one with the same bytes and the client flag cleared (an unchanged echo is the client's own message, which
 * sockperf discards: "No messages were received"); messages that want no answer (throughput mode) get none.
 * Anything else (shorter than the header, without the client flag, or whose length field is not the datagram's
 * size) is not sockperf's and is dropped as `malformed` (flowlb_dropped_packets_total): never answered, never a
 * crash.
 */
import type { Flow, FlowHandler, HandlerContext } from './types.js';

/** sockperf's header: seqn (u64), flags (u16), len (u32). */
export const SOCKPERF_HEADER_BYTES = 14;
const FLAGS_AT = 8;
const LENGTH_AT = 10;
const CLIENT = 1;
const PONG_REQUEST = 2;

/** Per process; reported with every load report (see "Handler counters" in the README). */
const counts = { answered: 0, noAnswerWanted: 0, malformed: 0 };

const sockperfHandler: FlowHandler & { counters(): Record<string, number> } = {
  name: 'sockperf',
  statelessFlows: true,
  onPacket(payload: Buffer, flow: Flow): void {
    if (payload.length < SOCKPERF_HEADER_BYTES || payload.readUInt32BE(LENGTH_AT) !== payload.length) { counts.malformed++; return; }
    const flags = payload.readUInt16BE(FLAGS_AT);
    if ((flags & CLIENT) === 0) { counts.malformed++; return; }
    if ((flags & PONG_REQUEST) === 0) { counts.noAnswerWanted++; return; }
    // The packet is ours once onPacket has it (as echo replies with it): answer in place, no copy.
    payload.writeUInt16BE(flags & ~CLIENT, FLAGS_AT);
    counts.answered++;
    flow.reply(payload);
  },
  counters(): Record<string, number> {
    return { sockperf_answered: counts.answered, sockperf_no_answer_wanted: counts.noAnswerWanted, dropped_malformed: counts.malformed };
  },
};

/** Stateless, so every worker shares the one object. */
export function createSockperfHandler(_ctx: HandlerContext): FlowHandler {
  return sockperfHandler;
}
