/**
 * The primary's view of its worker lanes: which process serves each lane, whether it is ready, its latest
 * load report, and crash history for respawn throttling.
 */
import type { Worker } from 'node:cluster';
import type dgram from 'node:dgram';
import type { PrimaryToWorker, WorkerToPrimary } from './protocol.js';

export type WorkerReportMsg = Extract<WorkerToPrimary, { t: 'report' }>;

export interface QueuedMessage {
  readonly msg: PrimaryToWorker;
  readonly handle: dgram.Socket | undefined;
  readonly done: (() => void) | undefined;
}

interface LaneState {
  worker: Worker | null;
  /** The worker has said hello: its message listener is attached. Until then messages wait in `pending`. */
  listening: boolean;
  pending: QueuedMessage[];
  pid: number;
  ready: boolean;
  everReady: boolean;
  startedAt: number;
  lastReport: WorkerReportMsg | null;
  /** performance.now() when a report showing the handled-packet counter advanced last arrived. */
  lastProgressMs: number;
  /** performance.now() of the latest report (or of readiness, before the first one). */
  lastReportAt: number;
  /** Counters of processes that served this lane before (so cluster totals never go backwards after a crash). */
  retired: RetiredCounters;
  /** Estimated packets lost with processes of this lane that died (see recordLost). */
  lostOnExit: number;
  crashes: number[];
  restarts: number;
}

export interface RetiredCounters {
  rxPackets: number; rxBytes: number; handled: number; replies: number; replyBytes: number; replyErrors: number;
  flowsCreated: number; flowsExpired: number; handlerCrashes: number; drops: number[]; latencyCounts: number[]; latencySumMs: number;
}

function emptyRetired(): RetiredCounters {
  return {
    rxPackets: 0, rxBytes: 0, handled: 0, replies: 0, replyBytes: 0, replyErrors: 0, flowsCreated: 0, flowsExpired: 0,
    handlerCrashes: 0, drops: [], latencyCounts: [], latencySumMs: 0,
  };
}

function addInto(a: number[], b: readonly number[]): void {
  for (let i = 0; i < b.length; i++) a[i] = (a[i] ?? 0) + b[i]!;
}

export class WorkerSet {
  private readonly lanes: LaneState[] = [];

  constructor(readonly size: number) {
    for (let i = 0; i < size; i++) {
      this.lanes.push({
        worker: null, listening: false, pending: [], pid: 0, ready: false, everReady: false, startedAt: 0, lastReport: null, lastProgressMs: -Infinity, lastReportAt: -Infinity, retired: emptyRetired(), lostOnExit: 0,
        crashes: [], restarts: -1,
      });
    }
  }

  attach(lane: number, w: Worker): void {
    const s = this.lanes[lane]!;
    s.worker = w;
    s.listening = false;
    s.pending = [];
    s.pid = w.process.pid ?? 0;
    s.ready = false;
    s.startedAt = Date.now();
    s.lastReport = null;
    s.lastProgressMs = -Infinity;
    s.lastReportAt = -Infinity;
    s.restarts++;
  }

  detach(lane: number): void {
    const s = this.lanes[lane]!;
    const r = s.lastReport;
    if (r) {
      const c = r.counters, t = s.retired;
      t.rxPackets += c.rxPackets; t.rxBytes += c.rxBytes; t.handled += c.handled; t.replies += c.replies;
      t.replyBytes += c.replyBytes; t.replyErrors += c.replyErrors; t.flowsCreated += c.flowsCreated;
      t.flowsExpired += c.flowsExpired; t.handlerCrashes += c.handlerCrashes; addInto(t.drops, c.drops);
      addInto(t.latencyCounts, c.latencyCounts); t.latencySumMs += c.latencySumMs;
    }
    s.worker = null;
    s.ready = false;
    s.lastReport = null;
    s.listening = false;
    s.pending = [];
  }

  isListening(lane: number): boolean { return this.lanes[lane]!.listening; }

  queue(lane: number, msg: PrimaryToWorker, handle: dgram.Socket | undefined, done: (() => void) | undefined): void {
    this.lanes[lane]!.pending.push({ msg, handle, done });
  }

  /** Marks the lane as listening and returns the messages that waited for it, in order. */
  listening(lane: number): QueuedMessage[] {
    const s = this.lanes[lane]!;
    s.listening = true;
    const q = s.pending;
    s.pending = [];
    return q;
  }

  markReady(lane: number, pid: number): void {
    const s = this.lanes[lane]!;
    s.ready = true;
    s.everReady = true;
    s.pid = pid;
    s.lastReportAt = performance.now();
  }

  ingestReport(lane: number, r: WorkerReportMsg): void {
    const s = this.lanes[lane]!;
    const prev = s.lastReport;
    if (prev !== null && r.counters.handled > prev.counters.handled) s.lastProgressMs = performance.now();
    s.lastReport = r;
    s.lastReportAt = performance.now();
  }

  /** Records a crash; true if the lane crashed too often to be restarted. */
  recordCrash(lane: number, max: number, windowMs: number): boolean {
    const s = this.lanes[lane]!;
    const now = Date.now();
    s.crashes = s.crashes.filter((t) => now - t < windowMs);
    s.crashes.push(now);
    return s.crashes.length > max;
  }

  worker(lane: number): Worker | null { return this.lanes[lane]?.worker ?? null; }
  isReady(lane: number): boolean { return this.lanes[lane]?.ready === true && this.lanes[lane]!.worker !== null; }
  everReady(lane: number): boolean { return this.lanes[lane]?.everReady === true; }
  allReady(): boolean { return this.lanes.every((s) => s.ready); }
  readyCount(): number { return this.lanes.filter((s) => s.ready).length; }
  pid(lane: number): number { return this.lanes[lane]!.pid; }
  lastReport(lane: number): WorkerReportMsg | null { return this.lanes[lane]!.lastReport; }
  /** When the lane last showed progress (a report with its handled-packet counter advanced); -Infinity if never. */
  lastProgressMs(lane: number): number { return this.lanes[lane]?.lastProgressMs ?? -Infinity; }
  /** Milliseconds since the lane's latest report (since readiness before the first); Infinity if never ready. */
  reportAgeMs(lane: number): number { return performance.now() - (this.lanes[lane]?.lastReportAt ?? -Infinity); }
  /**
   * Ready and reporting: a worker stuck in a handler (an endless loop, a blocking call) stays "ready" but its
   * reports stop; past `stalledAfterMs` it counts as down for /healthz, /status and flowlb_worker_up.
   */
  isUp(lane: number, stalledAfterMs: number): boolean { return this.isReady(lane) && this.reportAgeMs(lane) <= stalledAfterMs; }
  retired(lane: number): RetiredCounters { return this.lanes[lane]!.retired; }

  /**
   * A worker died (not a shutdown) after `written` packet frames went into its channel. Those it had not reported
   * handled, dropped or handed on are estimated lost: the frames it had not read by its last report (written -
   * received) plus its queue then, less what it handed back since (`returnedSince`: a migration's hand-over, a
   * shed, counted by the primary as they came: a queue handed over just before the kill was counted lost). An
   * estimate, high by what it served after that report (at most one report interval of its work); 0 if that comes
   * out negative. Call before detach.
   */
  recordLost(lane: number, written: number, returnedSince = 0): number {
    const s = this.lanes[lane]!, r = s.lastReport;
    const lost = Math.max(0, written - (r?.counters.rxPackets ?? 0) + (r?.queueDepth ?? 0) - returnedSince);
    s.lostOnExit += lost;
    return lost;
  }

  lostOnExit(lane: number): number { return this.lanes[lane]!.lostOnExit; }
  restarts(lane: number): number { return Math.max(0, this.lanes[lane]!.restarts); }
  all(): Worker[] { return this.lanes.map((s) => s.worker).filter((w): w is Worker => w !== null); }
}

/** A worker that has not reported for this long is stalled: 20 report intervals, at least 2 s. */
export function stalledAfterMs(reportIntervalMs: number): number {
  return Math.max(2000, 20 * reportIntervalMs);
}
