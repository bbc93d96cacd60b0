/**
 * Control messages between the primary and its workers, over cluster's IPC channel (never per packet).
 * Every message is an object with a `t` tag; `isFlowlbMessage` tells them from cluster's own traffic.
 */

/** A flow's identity and exported state as it travels between workers during a migration. */
export interface FlowTransfer {
  readonly hash: number;
  readonly port: number;
  readonly family: number;
  readonly listener: number;
  /** 16 address bytes, base64. */
  readonly addr: string;
  readonly packets: number;
  /** Time since the flow's last packet when it left (ms), so a move does not restart its idle clock. */
  readonly idleMs?: number;
  readonly data: unknown;
  /** Index of the socket message that carries this flow's socket, or -1. */
  readonly socket: number;
}

export interface WorkerCounters {
  rxPackets: number;
  rxBytes: number;
  handled: number;
  replies: number;
  replyBytes: number;
  replyErrors: number;
  flowsCreated: number;
  flowsExpired: number;
  flowsActive: number;
  handlerCrashes: number;
  /** Indexed like DROP_REASONS. */
  drops: number[];
  /** Dispatch latency samples histogram: counts per bucket of LATENCY_BOUNDS_MS, plus sum. */
  latencyCounts: number[];
  latencySumMs: number;
}

export type PrimaryToWorker =
  | { t: 'front'; listener: number }
  | { t: 'own'; epoch: number; add: number[]; remove: number[] }
  /**
   * `late`: the flows' migration had ended (timed out) before they came back; the worker adds a flow only if it
   * owns the bucket and has no state for that flow yet.
   */
  | { t: 'import'; bucket: number; epoch: number; flows: FlowTransfer[]; sockets: number; late?: boolean }
  | { t: 'import-socket'; bucket: number; epoch: number; index: number }
  | { t: 'reconfigure'; config: unknown }
  /** Packet mode: hand back up to `packets` queued packets (heaviest flows first) to be spread to other workers. */
  | { t: 'shed'; packets: number }
  | { t: 'shutdown' };

export type WorkerToPrimary =
  /** The worker listens for control messages now (ESM workers load asynchronously; messages sent earlier would be lost). */
  | { t: 'hello' }
  | { t: 'ready'; pid: number }
  | {
    t: 'report'; seq: number; intervalMs: number; cpuUtil: number; elu: number; queueDepth: number; peakQueueDepth: number;
    activeQueues: number; counters: WorkerCounters; memRss: number;
    /** Cumulative user + system CPU time of the worker process, microseconds. */
    cpuUs: number;
    /** The worker's cgroup CPU quota in cores (see cpu-limit.ts); 0 = none. */
    cpuLimit: number;
    /**
     * The event-loop thread over the interval (sched-stat.ts): time on a CPU and time runnable but waiting for one,
     * as fractions of the interval's wall time; -1 when the kernel does not say.
     */
    schedRun: number;
    schedWait: number;
    /** Cumulative wait of the event-loop thread for a CPU, microseconds; -1 when the kernel does not say. */
    schedWaitUs: number;
    handlerCounters?: Record<string, number>;
  }
  | { t: 'released'; bucket: number; epoch: number; flows: FlowTransfer[]; frames: string; sockets: number }
  | { t: 'released-socket'; bucket: number; epoch: number; index: number }
  /** `imported`: flows added; `skipped`: flows refused (newer state already here, or a late import of a bucket not owned). */
  | { t: 'imported'; bucket: number; epoch: number; imported: number; skipped: number }
  /** Packet mode: queued packets handed back (frames, base64). */
  | { t: 'shed-frames'; frames: string; packets: number }
  | { t: 'fatal'; message: string };

export type FlowlbMessage = PrimaryToWorker | WorkerToPrimary;

export function isFlowlbMessage(m: unknown): m is FlowlbMessage {
  return typeof m === 'object' && m !== null && typeof (m as { t?: unknown }).t === 'string';
}

/** Upper bounds (ms) of the dispatch latency histogram: primary receive batch to handler start. */
export const LATENCY_BOUNDS_MS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000];
