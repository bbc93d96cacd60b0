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
 * back in order and reach C before the held ones, which precede everything after the flip. A worker that
 * never answers is covered by a timeout: the bucket goes to C without the lost state and the held packets.
 */
import type dgram from 'node:dgram';
import { DROP_MIGRATION_TIMEOUT } from '../datapath/counters.js';
import type { Dispatcher } from '../datapath/dispatcher.js';
import type { Logger } from '../log.js';
import type { FlowTransfer, PrimaryToWorker } from './protocol.js';
import { stopReading } from './socket-handle.js';

export interface MigrationPeer {
  /** Sends a control message to a worker lane; false if that worker is gone. */
  send(lane: number, msg: PrimaryToWorker, handle?: dgram.Socket, done?: () => void): boolean;
  alive(lane: number): boolean;
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
  readonly durationCounts = new Float64Array(MIGRATION_BUCKETS_S.length + 1);
  durationSumS = 0;

  constructor(
    private readonly dispatcher: Dispatcher,
    private readonly peer: MigrationPeer,
    public timeoutMs: number,
    private readonly log: Logger,
    private readonly onDone: (bucket: number, to: number) => void,
  ) {}

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
    if (from >= d.maxWorkers || !this.peer.alive(from)) {
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
      sockets: [], socketsLeft: 0, timer: setTimeout(() => this.expire(bucket, epoch), this.timeoutMs),
    };
    m.timer.unref();
    this.active.set(bucket, m);
    return true;
  }

  onReleased(lane: number, msg: { bucket: number; epoch: number; flows: FlowTransfer[]; frames: string; sockets: number }): void {
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.from !== lane || m.phase !== 'releasing') return;
    m.flows = msg.flows;
    m.frames = Buffer.from(msg.frames, 'base64');
    m.sockets = new Array<dgram.Socket | null>(msg.sockets).fill(null);
    m.socketsLeft = msg.sockets;
    m.phase = 'collecting';
    if (m.socketsLeft === 0) this.sendImport(m);
  }

  onReleasedSocket(lane: number, msg: { bucket: number; epoch: number; index: number }, socket: dgram.Socket | undefined): void {
    if (socket) stopReading(socket); // the primary only passes it on
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.from !== lane || m.phase !== 'collecting' || !socket) {
      try { socket?.close(); } catch { /* closed */ }
      return;
    }
    m.sockets[msg.index] = socket;
    if (--m.socketsLeft === 0) this.sendImport(m);
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

  onImported(lane: number, msg: { bucket: number; epoch: number }): void {
    const m = this.active.get(msg.bucket);
    if (!m || m.epoch !== msg.epoch || m.to !== lane || m.phase !== 'importing') return;
    this.finish(m, 'done');
  }

  private expire(bucket: number, epoch: number): void {
    const m = this.active.get(bucket);
    if (!m || m.epoch !== epoch) return;
    this.log.warn('migration timed out', { bucket, from: m.from, to: m.to, phase: m.phase });
    this.finish(m, 'timeout');
  }

  /** A worker died: migrations from it complete without its state; migrations to it are redirected. */
  onWorkerExit(lane: number, pickTarget: (bucket: number) => number): void {
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
      // Nobody to give it to: the held packets are lost and counted.
      d.discardHold(m.bucket, m.hold, DROP_MIGRATION_TIMEOUT);
    } else {
      if (outcome !== 'done') {
        // The new owner starts the bucket without the lost state; tell it it owns the bucket.
        this.peer.send(to, { t: 'own', epoch: d.table.epoch, add: [m.bucket], remove: [] });
        for (const s of m.sockets) try { s?.close(); } catch { /* closed */ }
      }
      d.endHold(m.bucket, m.hold, to, outcome === 'done' ? m.frames : null);
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
      handedOverBytes: m.frames?.length ?? 0, held, outcome, at: new Date().toISOString(),
    });
    if (this.recent.length > 32) this.recent.shift();
    if (to >= 0) this.onDone(m.bucket, to);
  }

  /** Ends every migration (shutdown). */
  abortAll(): void {
    for (const m of [...this.active.values()]) this.finish(m, 'aborted');
  }
}
