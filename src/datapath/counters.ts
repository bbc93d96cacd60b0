/**
 * Named counters of the packet path. Counts live in Float64Arrays (exact integers up to 2^53) indexed by the
 * constants below, and are copied into Prometheus metrics at scrape time; nothing here allocates per packet.
 * Every drop path increments exactly one DROP_* counter, so received = dispatched + dropped holds.
 */

/** Drop reasons, in counter order. The names are the `reason` label values of flowlb_dropped_packets_total. */
export const DROP_REASONS = [
  'oversize',        // primary: datagram larger than the channel carries
  'malformed',       // primary: source address could not be parsed; worker: frame out of sync
  'unassigned',      // primary: bucket had no owner
  'worker_down',     // primary: owner's channel is closed (worker died, buckets not yet moved)
  'channel_full',    // primary: too many bytes buffered towards the owner
  'hold_overflow',   // primary: too many packets held for a migrating bucket
  'queue_full',      // worker: its queue passed the limit; the heaviest flow lost a packet
  'flow_queue_full', // worker: one flow's queue passed its cap
  'flow_table_full', // worker: no free flow slot for a new flow
  'handler_error',   // worker: the handler threw on this packet
  'no_backend',      // proxy: no backend with a positive weight
  'migration_timeout', // primary: a migration's hand-over never came; its packets are gone
  'migration_late',    // primary, counted under the old owner's lane: packets it handed over after the migration had ended (timed out)
  'connect_failed',    // proxy: the flow's upstream connect failed (or it is in the retry delay)
  'preconnect_queue_full', // proxy: too many packets while the flow's upstream socket connects
  'migrating',         // proxy: queued for an upstream connect when the flow migrated
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

export const DROP_OVERSIZE = 0;
export const DROP_MALFORMED = 1;
export const DROP_UNASSIGNED = 2;
export const DROP_WORKER_DOWN = 3;
export const DROP_CHANNEL_FULL = 4;
export const DROP_HOLD_OVERFLOW = 5;
export const DROP_QUEUE_FULL = 6;
export const DROP_FLOW_QUEUE_FULL = 7;
export const DROP_FLOW_TABLE_FULL = 8;
export const DROP_HANDLER_ERROR = 9;
export const DROP_NO_BACKEND = 10;
export const DROP_MIGRATION_TIMEOUT = 11;
export const DROP_MIGRATION_LATE = 12;
export const DROP_CONNECT_FAILED = 13;
export const DROP_PRECONNECT_QUEUE_FULL = 14;
export const DROP_MIGRATING = 15;
export const DROP_REASON_COUNT = DROP_REASONS.length;

export function dropIndex(reason: DropReason): number {
  return DROP_REASONS.indexOf(reason);
}
