/**
 * Exact-average pacing against a token schedule: packet k (from 0) is due at k / rate seconds after the
 * start. Each timer turn sends every packet already due (at most `maxBurst`), so timer lateness changes
 * only burst sizes, never the average. Times are nanoseconds since the start as plain numbers (exact up
 * to 104 days), taken from process.hrtime.bigint().
 */

export class Pacer {
  readonly ratePps: number;
  /** Packets whose slot starts before the deadline: the most that may be sent. */
  readonly slotLimit: number;
  private readonly nsPerPacket: number;

  constructor(ratePps: number, limitPackets: number, deadlineNs: number) {
    if (!(ratePps > 0) || !Number.isFinite(ratePps)) throw new RangeError(`rate must be > 0, got ${ratePps}`);
    this.ratePps = ratePps;
    this.nsPerPacket = 1e9 / ratePps;
    // Slot k starts at k * nsPerPacket; those with a start < deadline are ceil(deadline / nsPerPacket).
    const byDeadline = Number.isFinite(deadlineNs) ? Math.ceil((deadlineNs * ratePps) / 1e9 - 1e-9) : Infinity;
    this.slotLimit = Math.min(limitPackets, byDeadline);
  }

  /** Packets due (in total, since the start) at `elapsedNs`, capped at the slot limit. */
  dueAt(elapsedNs: number): number {
    const due = Math.floor((elapsedNs * this.ratePps) / 1e9) + 1;
    return due < this.slotLimit ? due : this.slotLimit;
  }

  /** Start of slot `k`, in ns since the start. */
  slotStartNs(k: number): number {
    return k * this.nsPerPacket;
  }

  /** Duration of one slot; the last packet's slot ends one slot after it was due. */
  get slotNs(): number {
    return this.nsPerPacket;
  }
}

/**
 * How long to wait before the next turn when `sent` packets are out and none is due: the time to the next
 * slot, rounded down to whole milliseconds (the timer's unit). A result of 0 means "as soon as possible".
 */
export function waitForSlotMs(pacer: Pacer, sent: number, elapsedNs: number): number {
  const ns = pacer.slotStartNs(sent) - elapsedNs;
  return ns <= 0 ? 0 : Math.floor(ns / 1e6);
}
