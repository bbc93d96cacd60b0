/**
 * The bucket migration state machine (primary side). Moving bucket b from worker A to worker C:
 *
 *   1. hold      the primary stops sending b to A (b's new packets wait in a hold lane) and writes a
 *                RELEASE frame into A's channel right after the last packet of b it sent to A.
 *   2. release   A reaches the RELEASE frame in order, takes b's packets still queued, exports b's flows
 *                (handler exportFlow; a proxy's upstream socket handle travels along) and sends them back.
 *   3. import    the primary forwards the flows (and socket handles) to C; C imports them.
 *   4. flip      once C confirms, the primary writes A's handed-over packets, then the held packets, into C's
 *                channel and makes C the owner of b, all in one synchronous step, so later packets follow.
 *
 * No packet of b is lost or reordered: A saw a prefix of b's packets and served some of them; the rest come
 * back in order and reach C before the held ones, which precede everything after the flip.
 *
 * Timeout (`timeoutMs`, migrationTimeout). A reads its channel only between drain slices, so a busy worker (a
 * slice of expensive packets) reaches the RELEASE frame late while still working. When the timer fires, the
 * worker the migration waits for (A while releasing, C while importing) is asked for evidence of progress: a
 * load report whose handled-packet counter had advanced, received within the last PROGRESS_WINDOW timeouts. With
 * it the migration waits another timeout, up to TIMEOUT_CAP timeouts from its start in all; without it (no
 * reports: stopped, hung, or reporting without serving) it ends at once with outcome 'timeout':
 *   - C is told it owns b; A's handed-over packets, if they already came back, then the held packets go to C,
 *     in order. Held packets beyond holdLimit were dropped on arrival as hold_overflow, as in every migration.
 *   - b's flows start afresh on C, unless their state turns up later (below).
 * A worker that answers after that (a late 'released'): its handed-over packets cannot be delivered in order any
 * more (C has served b since) and are dropped, counted as `migration_late` under A's lane (they had been
 * dispatched to A, so the primary's identity received = dispatched + primary drops + held still holds). Its
 * exported flows go to b's current owner as a late import, which adds a flow only if that worker owns b and has
 * no state for the flow yet (never overwriting newer state); flows it refuses, and every flow when b is moving
 * again or has no live owner, are counted as lost (lateFlowsLost), their socket handles closed. Socket handles
 * are passed on or closed, never kept. Nothing a late answer carries disappears without a counter.
 */
import type dgram from 'node:dgram';
import { DROP_MIGRATION_TIMEOUT } from '../datapath/counters.js';
import type { Dispatcher } from '../datapath/dispatcher.js';
import { countPackets } from '../datapath/frame.js';
import type { Logger } from '../log.js';
import type { FlowTransfer, PrimaryToWorker } from './protocol.js';
import { stopReading } from './socket-handle.js';

export interface MigrationPeer {
  /** Sends a control message to a worker lane; false if that worker is gone. */
  send(lane: number, msg: PrimaryToWorker, handle?: dgram.Socket, done?: () => void): boolean;
  alive(lane: number): boolean;
  /** performance.now() when the lane's latest load report showing its handled-packet counter advanced arrived; -Infinity if none. */
  lastProgressMs(lane: number): number;
}

/** A migration waits at most this many timeouts in all for a worker that keeps showing progress. */
export const TIMEOUT_CAP = 4;
/**
 * Progress counts if shown within this many timeouts. More than one: a worker reports only between drain slices,
 * and a slice that delays the RELEASE frame past the timeout delays its next report as long.
 */
export const PROGRESS_WINDOW = 2;

/** A hand-over that came after its migration had ended, waiting for its socket handles. */
interface LateRelease {
  readonly bucket: number;
  readonly from: number;
  readonly epoch: number;
  readonly flows: FlowTransfer[];
  readonly sockets: (dgram.Socket | null)[];
  left: number;
}


interface Migration {
  readonly bucket: number;
  readonly from: number;
  to: number;
  readonly hold: number;
  readonly epoch: number;
  readonly startedMs: number;
  phase: 'releasing' | 'collecting' | 'importing';
  flows: FlowTransfer[];
  frames: Buffer | null;
  sockets: (dgram.Socket | null)[];
  socketsLeft: number;
  timer: NodeJS.Timeout;
  /** Times the timeout fired and was extended because the awaited worker showed progress. */
  extensions: number;
}

export interface MigrationRecord {
  readonly bucket: number;
  readonly from: number;
  readonly to: number;
  readonly epoch: number;
  readonly durationMs: number;
  readonly flows: number;
  readonly handedOverBytes: number;
  readonly held: number;
  readonly extensions: number;
  readonly outcome: 'done' | 'timeout' | 'aborted';
  readonly at: string;
}

/** Upper bounds of the migration duration histogram, in seconds. */
export const MIGRATION_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export class Migrator {
  private readonly active = new Map<number, Migration>();
  private epochCounter = 0;
  readonly recent: MigrationRecord[] = [];
  completed = 0;
  timeouts = 0;
  aborted = 0;
  /** Timeouts that fired and were extended (the awaited worker showed progress). */
  extended = 0;
  /** Hand-overs ('released') that came after their migration had ended. */
  lateReleases = 0;
  /** Per worker lane: handed-over packets dropped because their migration had ended (reason migration_late). */
  readonly lateDropped: Float64Array;
  /** Exported flow states imported after their migration had ended (late release, or import confirmed after a timeout). */
  lateFlowsImported = 0;
  /** Exported flow states discarded: the owner had newer state, the bucket was moving again or had no live owner. */
  lateFlowsLost = 0;
  private readonly late = new Map<number, LateRelease>();
  readonly durationCounts = new Float64Array(MIGRATION_BUCKETS_S.length + 1);
  durationSumS = 0;

  constructor(
    private readonly dispatcher: Dispatcher,
    private readonly peer: MigrationPeer,
    public timeoutMs: number,
    private readonly log: Logger,
    private readonly onDone: (bucket: number, to: number) => void,
  ) {
    this.lateDropped = new Float64Array(dispatcher.maxWorkers);
  }

  get inFlight(): number {
    return this.active.size;
  }

  isMigrating(bucket: number): boolean {
    return this.active.has(bucket);
  }

  /** Where a migrating bucket is going (or its owner lane when it is not migrating). */
  destinationOf(bucket: number): number {
    return this.active.get(bucket)?.to ?? this.dispatcher.table.owner[bucket]!;
  }

  /** Starts moving `bucket` to worker lane `to`. Returns false if it cannot start now (no hold lane free, already moving). */
  start(bucket: number, to: number): boolean {
    if (this.active.has(bucket)) return false;
    const d = this.dispatcher;
    const from = d.table.owner[bucket]!;
    if (from === to || !this.peer.alive(to)) return false;
    // A worker with a channel but not ready yet (a replacement still starting, after every worker died at once)
    // may have packets of the bucket waiting in its channel: it must hand them over like any owner, or it serves
    // them later than the new owner serves newer ones (60-170 packets per flow out of order before this).
    if (from >= d.maxWorkers || !d.hasSink(from)) {
      // Nothing to hand over (the owner is gone): give the bucket directly.
      d.table.set(bucket, to);
      d.table.epoch++;
      this.peer.send(to, { t: 'own', epoch: d.table.epoch, add: [bucket], remove: [] });
      this.onDone(bucket, to);
      return true;
    }
    const hold = d.allocHold();
    if (hold < 0) return false;
    const epoch = ++this.epochCounter;
    d.table.epoch++;
    d.beginHold(bucket, hold, epoch);
    const m: Migration = {
      bucket, from, to, hold, epoch, startedMs: performance.now(), phase: 'releasing', flows: [], frames: null,
      sockets: [], socketsLeft: 0, timer: setTimeout(() => this.expire(bucket, epoch), this.timeoutMs), extensions: 0,
    };
    m.timer.unref();
    this.active.set(bucket, m);
    return true;
  }

  onReleased(lane: number, msg: { bucket: number; epoch: number; flows: FlowTransfer[]; frames: string; sockets: number }): void {
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.from !== lane || m.phase !== 'releasing') { this.onLateRelease(lane, msg); return; }
    m.flows = msg.flows;
    m.frames = Buffer.from(msg.frames, 'base64');
    this.dispatcher.returnedFrom(lane, countPackets(m.frames));
    m.sockets = new Array<dgram.Socket | null>(msg.sockets).fill(null);
    m.socketsLeft = msg.sockets;
    m.phase = 'collecting';
    if (m.socketsLeft === 0) this.sendImport(m);
  }

  onReleasedSocket(lane: number, msg: { bucket: number; epoch: number; index: number }, socket: dgram.Socket | undefined): void {
    if (socket) stopReading(socket); // the primary only passes it on
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.from !== lane || m.phase !== 'collecting' || !socket) {
      const r = this.late.get(msg.epoch);
      if (r && r.from === lane && r.bucket === msg.bucket && socket && r.sockets[msg.index] === null) {
        r.sockets[msg.index] = socket;
        if (--r.left === 0) { this.late.delete(msg.epoch); this.lateImport(r); }
        return;
      }
      try { socket?.close(); } catch { /* closed */ }
      return;
    }
    m.sockets[msg.index] = socket;
    if (--m.socketsLeft === 0) this.sendImport(m);
  }

  /**
   * A worker handed over a bucket whose migration had already ended (timed out, or aborted towards it): its
   * packets are dropped and counted (migration_late, under its lane), its flows go to the bucket's current owner
   * once their socket handles are in.
   */
  private onLateRelease(lane: number, msg: { bucket: number; epoch: number; flows: FlowTransfer[]; frames: string; sockets: number }): void {
    const packets = countPackets(Buffer.from(msg.frames, 'base64'));
    this.dispatcher.returnedFrom(lane, packets);
    this.lateReleases++;
    if (lane >= 0 && lane < this.lateDropped.length) this.lateDropped[lane]! += packets;
    this.log.warn('hand-over came after its migration had ended: packets dropped, flows offered to the current owner', {
      bucket: msg.bucket, from: lane, epoch: msg.epoch, packets, flows: msg.flows.length,
    });
    const r: LateRelease = {
      bucket: msg.bucket, from: lane, epoch: msg.epoch, flows: msg.flows,
      sockets: new Array<dgram.Socket | null>(msg.sockets).fill(null), left: msg.sockets,
    };
    if (r.left === 0) this.lateImport(r);
    else this.late.set(r.epoch, r);
  }

  /**
   * Offers late flows to the bucket's current owner (it adds those it has no state for and says how many it
   * took), or counts them lost when the bucket is moving again or has no live owner.
   */
  private lateImport(r: LateRelease): void {
    if (r.flows.length === 0) { this.closeAll(r.sockets); return; }
    const owner = this.dispatcher.table.owner[r.bucket]!;
    const ok = owner < this.dispatcher.maxWorkers && !this.active.has(r.bucket) && this.peer.alive(owner)
      && this.peer.send(owner, { t: 'import', bucket: r.bucket, epoch: r.epoch, flows: r.flows, sockets: r.sockets.length, late: true });
    if (!ok) {
      this.lateFlowsLost += r.flows.length;
      this.closeAll(r.sockets);
      return;
    }
    r.sockets.forEach((s, index) => {
      if (!s) return;
      const sent = this.peer.send(owner, { t: 'import-socket', bucket: r.bucket, epoch: r.epoch, index }, s, () => {
        try { s.close(); } catch { /* closed */ }
      });
      if (!sent) try { s.close(); } catch { /* closed */ }
    });
  }

  private closeAll(sockets: (dgram.Socket | null)[]): void {
    for (const s of sockets) try { s?.close(); } catch { /* closed */ }
  }

  private sendImport(m: Migration): void {
    if (!this.peer.alive(m.to)) { this.finish(m, 'aborted'); return; }
    m.phase = 'importing';
    this.peer.send(m.to, { t: 'import', bucket: m.bucket, epoch: m.epoch, flows: m.flows, sockets: m.sockets.length });
    m.sockets.forEach((s, index) => {
      if (!s) return;
      this.peer.send(m.to, { t: 'import-socket', bucket: m.bucket, epoch: m.epoch, index }, s, () => {
        try { s.close(); } catch { /* closed */ }
      });
    });
  }

  onImported(lane: number, msg: { bucket: number; epoch: number; imported?: number; skipped?: number }): void {
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.to !== lane || m.phase !== 'importing') {
      // A late import: flows the importer refused (it had newer state, or no longer owns the bucket) are lost.
      this.lateFlowsImported += msg.imported ?? 0;
      this.lateFlowsLost += msg.skipped ?? 0;
      return;
    }
    // On time, the importer skips only flows it already has: in packet mode spilled packets start flows on other
    // workers than the bucket's owner, and those keep their state there (they were counted as lost before).
    this.finish(m, 'done');
  }

  private expire(bucket: number, epoch: number): void {
    const m = this.active.get(bucket);
    if (!m || m.epoch !== epoch) return;
    // The worker this phase waits for: the old owner until it has handed over, then the new one.
    const waitingFor = m.phase === 'importing' ? m.to : m.from;
    const now = performance.now();
    const left = m.startedMs + TIMEOUT_CAP * this.timeoutMs - now;
    if (left >= 1 && this.peer.alive(waitingFor) && now - this.peer.lastProgressMs(waitingFor) < PROGRESS_WINDOW * this.timeoutMs) {
      // Busy, not stuck: its reports keep coming and it keeps serving packets. Wait longer, up to the cap.
      m.extensions++;
      this.extended++;
      this.log.info('migration waits longer: the worker is busy but making progress', {
        bucket, from: m.from, to: m.to, phase: m.phase, waitedMs: Math.round(now - m.startedMs),
      });
      m.timer = setTimeout(() => this.expire(bucket, epoch), Math.min(this.timeoutMs, left));
      m.timer.unref();
      return;
    }
    this.log.warn('migration timed out', { bucket, from: m.from, to: m.to, phase: m.phase, waitedMs: Math.round(now - m.startedMs) });
    this.finish(m, 'timeout');
  }

  /** A worker died: migrations from it complete without its state; migrations to it are redirected. */
  onWorkerExit(lane: number, pickTarget: (bucket: number) => number): void {
    // Late hand-overs from it whose socket handles will not come now: their flows are lost.
    for (const r of [...this.late.values()]) {
      if (r.from !== lane) continue;
      this.late.delete(r.epoch);
      this.lateFlowsLost += r.flows.length;
      this.closeAll(r.sockets);
    }
    for (const m of [...this.active.values()]) {
      if (m.from === lane) this.finish(m, 'aborted');
      else if (m.to === lane) {
        const t = pickTarget(m.bucket);
        if (t < 0) { this.finish(m, 'aborted'); continue; }
        m.to = t;
        if (m.phase === 'importing') this.sendImport(m);
      }
    }
  }

  private finish(m: Migration, outcome: 'done' | 'timeout' | 'aborted'): void {
    clearTimeout(m.timer);
    this.active.delete(m.bucket);
    const d = this.dispatcher;
    let to = m.to;
    if (!this.peer.alive(to)) to = this.peer.alive(m.from) ? m.from : -1;
    const held = d.heldPackets(m.hold);
    if (to < 0) {
      // Nobody to give it to: the held packets are lost and counted, and so are handed-over ones.
      d.discardHold(m.bucket, m.hold, DROP_MIGRATION_TIMEOUT);
      if (m.frames !== null && m.from < this.lateDropped.length) this.lateDropped[m.from]! += countPackets(m.frames);
      this.lateFlowsLost += m.phase === 'importing' ? 0 : m.flows.length;
      this.closeAll(m.sockets);
    } else {
      if (outcome !== 'done') {
        // The new owner starts the bucket without the state it has not received; tell it it owns the bucket.
        this.peer.send(to, { t: 'own', epoch: d.table.epoch, add: [m.bucket], remove: [] });
        if (m.phase === 'collecting') {
          // The flows came back, some socket handles are still on their way: they go out as a late import when
          // the last one arrives (if the old owner died, they never will and the flows are lost).
          const r: LateRelease = { bucket: m.bucket, from: m.from, epoch: m.epoch, flows: m.flows, sockets: m.sockets, left: m.socketsLeft };
          if (this.peer.alive(m.from)) this.late.set(r.epoch, r);
          else { this.lateFlowsLost += r.flows.length; this.closeAll(r.sockets); }
        }
      }
      // Handed-over packets (once they came back) precede the held ones, whatever the outcome.
      d.endHold(m.bucket, m.hold, to, m.frames);
    }
    d.table.epoch++;
    const durationMs = performance.now() - m.startedMs;
    if (outcome === 'done') this.completed++; else if (outcome === 'timeout') this.timeouts++; else this.aborted++;
    const s = durationMs / 1000;
    let i = 0;
    while (i < MIGRATION_BUCKETS_S.length && s > MIGRATION_BUCKETS_S[i]!) i++;
    this.durationCounts[i]!++;
    this.durationSumS += s;
    this.recent.push({
      bucket: m.bucket, from: m.from, to, epoch: m.epoch, durationMs, flows: m.flows.length,
      handedOverBytes: m.frames?.length ?? 0, held, extensions: m.extensions, outcome, at: new Date().toISOString(),
    });
    if (this.recent.length > 32) this.recent.shift();
    if (to >= 0) this.onDone(m.bucket, to);
  }

  /** Ends every migration (shutdown). */
  abortAll(): void {
    for (const m of [...this.active.values()]) this.finish(m, 'aborted');
    for (const r of this.late.values()) this.closeAll(r.sockets);
    this.late.clear();
  }
}
