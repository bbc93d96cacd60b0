/**
 * One sender process's share of a run: open a socket per flow, send on the pacer's schedule, account the
 * replies, wait for the stragglers, close everything. Used in-process for --procs 1 and by every child
 * (shard-main.ts) otherwise.
 */
import dgram from 'node:dgram';
import { sourceAddressOf } from './address.js';
import { GenError } from './errors.js';
import { flowWeights, makeFlowPicker, makeRng, shardFlowIds } from './flows.js';
import type { ResolvedGenOptions } from './options.js';
import { makeTemplate, probeOffset, writeProbe, writeRtp } from './packet.js';
import { Pacer, waitForSlotMs } from './pacer.js';
import { FlowStats } from './stats.js';
import type { ShardCounts } from './stats.js';

/**
 * Once every packet is answered the drain still waits this long (within drainMs) so that duplicates
 * trailing the last distinct reply are counted too.
 */
const DRAIN_SETTLE_MS = 20;

/** Sockets bound and connected at once while opening a flow set: enough to be quick, few enough not to flood libuv. */
const OPEN_BATCH = 256;

export type StopReason = 'count' | 'duration' | 'timeout' | 'abort';

export interface ShardSpec {
  readonly index: number;
  readonly count: number;
  /** This process's share of the offered rate and of the packet count (null: no count limit). */
  readonly ratePps: number;
  readonly packets: number | null;
}

export interface ShardOutcome {
  counts: ShardCounts;
  /** Send phase: from the first slot to the end of the last packet's slot (or the stop, if cut short). */
  sendElapsedNs: number;
  drainMs: number;
  stoppedBy: StopReason;
  /** Furthest the sender fell behind its schedule (a turn's start minus the first unsent slot's), ms. */
  maxLagMs: number;
}

export interface ShardHooks {
  /** Awaited once every socket is open, right before the first packet (multi-process start barrier). */
  onReady?: () => Promise<void>;
  signal?: AbortSignal;
  onProgress?: (sent: number, received: number, elapsedMs: number) => void;
  progressIntervalMs?: number;
}

/** murmur3's 32-bit finaliser: a bijection, so distinct flow ids give distinct SSRCs. */
function mix32(x: number): number {
  x ^= x >>> 16;
  x = Math.imul(x, 0x85ebca6b);
  x ^= x >>> 13;
  x = Math.imul(x, 0xc2b2ae35);
  x ^= x >>> 16;
  return x >>> 0;
}

function closeAll(sockets: dgram.Socket[]): void {
  for (const s of sockets) {
    try {
      s.close();
    } catch {
      // already closed
    }
  }
}

async function openFlowSocket(opts: ResolvedGenOptions, flowId: number, onMessage: (msg: Buffer) => void, onError: () => void, sockets: dgram.Socket[]): Promise<dgram.Socket> {
  const { target } = opts;
  const socket = dgram.createSocket({
    type: target.family === 6 ? 'udp6' : 'udp4',
    ...(opts.socketBufferBytes !== null ? { recvBufferSize: opts.socketBufferBytes, sendBufferSize: opts.socketBufferBytes } : {}),
  });
  sockets.push(socket);
  socket.on('message', onMessage);
  const address = sourceAddressOf(flowId, opts.srcAddrs, target.family);
  await new Promise<void>((resolve, reject) => {
    const fail = (err: Error): void => reject(new GenError('ERR_GEN_SOCKET', `flow ${flowId}: bind ${address}:0 failed: ${err.message}`, { cause: err }));
    socket.once('error', fail);
    // exclusive: in a cluster worker a shared bind would hand every flow the same primary-owned socket.
    socket.bind({ address, port: 0, exclusive: true }, () => {
      socket.off('error', fail);
      resolve();
    });
  });
  // From here on socket errors (ICMP port unreachable on a connected socket, ENOBUFS) are counted, not thrown.
  socket.on('error', onError);
  if (opts.connect) {
    await new Promise<void>((resolve, reject) => {
      socket.connect(target.port, target.host, (err?: Error) =>
        err ? reject(new GenError('ERR_GEN_SOCKET', `flow ${flowId}: connect to ${opts.targetText} failed: ${err.message}`, { cause: err })) : resolve(),
      );
    });
  }
  return socket;
}

export async function runShard(opts: ResolvedGenOptions, spec: ShardSpec, hooks: ShardHooks = {}): Promise<ShardOutcome> {
  const flowIds = shardFlowIds(opts.flows, spec.index, spec.count);
  const n = flowIds.length;
  if (n === 0) throw new GenError('ERR_GEN_OPTION', `sender ${spec.index} of ${spec.count} has no flows`);
  const allWeights = flowWeights(opts.flows, opts.distribution);
  const weights = new Float64Array(n);
  for (let k = 0; k < n; k++) weights[k] = allWeights[flowIds[k]!]!;

  const off = probeOffset(opts.rtp);
  const stats = new FlowStats(flowIds, spec.index, spec.count, off, opts.runId);
  const hrtime = process.hrtime.bigint;
  let draining: (() => void) | null = null;
  const onMessage = (msg: Buffer): void => {
    stats.onReply(msg, hrtime());
    if (draining !== null && stats.totalReceived >= stats.totalSent) draining();
  };
  const onError = (): void => {
    stats.sendErrors++;
  };

  const sockets: dgram.Socket[] = [];
  try {
    const flowSockets = new Array<dgram.Socket>(n);
    for (let k = 0; k < n; k += OPEN_BATCH) {
      const batch: Promise<void>[] = [];
      for (let j = k; j < Math.min(n, k + OPEN_BATCH); j++) {
        batch.push(openFlowSocket(opts, flowIds[j]!, onMessage, onError, sockets).then((s) => void (flowSockets[j] = s)));
      }
      await Promise.all(batch);
    }
    if (hooks.onReady) await hooks.onReady();

    const send = await sendPhase(opts, spec, flowSockets, weights, stats, off, hooks);
    let drainMs = 0;
    if (opts.expectReplies && opts.drainMs > 0) {
      const t0 = performance.now();
      if (stats.totalReceived < stats.totalSent) {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            draining = null;
            resolve();
          }, opts.drainMs);
          draining = () => {
            draining = null;
            clearTimeout(timer);
            resolve();
          };
        });
      }
      const left = opts.drainMs - (performance.now() - t0);
      if (left > 0) await new Promise((r) => setTimeout(r, Math.min(DRAIN_SETTLE_MS, left)));
      drainMs = performance.now() - t0;
    }
    return { counts: stats.toCounts(), sendElapsedNs: send.elapsedNs, drainMs, stoppedBy: send.stoppedBy, maxLagMs: send.maxLagNs / 1e6 };
  } finally {
    closeAll(sockets);
  }
}

function sendPhase(
  opts: ResolvedGenOptions,
  spec: ShardSpec,
  sockets: dgram.Socket[],
  weights: Float64Array,
  stats: FlowStats,
  off: number,
  hooks: ShardHooks,
): Promise<{ elapsedNs: number; stoppedBy: StopReason; maxLagNs: number }> {
  const n = sockets.length;
  const flowIds = stats.flowIds;
  const flowSent = stats.sent;
  const picker = makeFlowPicker(weights, opts.distribution, (opts.seed + spec.index * 0x9e3779b1) >>> 0);
  const template = makeTemplate(opts.datagramBytes, opts.runId, opts.rtp, opts.rtpPayloadType);
  const len = template.length;
  const rtp = opts.rtp;
  const tsStep = opts.rtpTsStep;
  // RFC 3550 wants random initial sequence numbers and timestamps; seeded, so a run can be repeated.
  const rtpSeq0 = new Uint16Array(n);
  const rtpTs0 = new Uint32Array(n);
  const ssrc = new Uint32Array(n);
  if (rtp) {
    const rng = makeRng(opts.seed ^ 0x5bd1e995);
    const salt = mix32(opts.runId);
    for (let k = 0; k < n; k++) {
      rtpSeq0[k] = Math.floor(rng() * 65536);
      rtpTs0[k] = Math.floor(rng() * 4294967296);
      ssrc[k] = mix32((flowIds[k]! + salt) >>> 0);
    }
  }
  const deadlineNs = opts.sendLimitMs * 1e6;
  const pacer = new Pacer(spec.ratePps, spec.packets ?? Infinity, deadlineNs);
  const maxBurst = opts.maxBurst;
  const hrtime = process.hrtime.bigint;
  const signal = hooks.signal;

  return new Promise((resolve) => {
    const startNs = hrtime();
    let sent = 0;
    let lastSendNs = 0;
    let maxLagNs = 0;
    let timer: NodeJS.Timeout | null = null;
    let immediate: NodeJS.Immediate | null = null;
    let progress: NodeJS.Timeout | null = null;
    let done = false;

    const finish = (stoppedBy: StopReason, elapsedNs: number): void => {
      if (done) return;
      done = true;
      if (timer !== null) clearTimeout(timer);
      if (immediate !== null) clearImmediate(immediate);
      if (progress !== null) clearInterval(progress);
      signal?.removeEventListener('abort', onAbort);
      resolve({ elapsedNs, stoppedBy, maxLagNs });
    };
    const onAbort = (): void => finish('abort', Number(hrtime() - startNs));

    const turn = (): void => {
      timer = null;
      immediate = null;
      const elapsed = Number(hrtime() - startNs);
      const due = pacer.dueAt(elapsed);
      let burst = due - sent;
      if (burst > 0) {
        const lag = elapsed - pacer.slotStartNs(sent);
        if (lag > maxLagNs) maxLagNs = lag;
      }
      if (burst > maxBurst) burst = maxBurst;
      for (let b = 0; b < burst; b++) {
        const f = picker.next();
        const seq = flowSent[f]!;
        flowSent[f] = seq + 1;
        const buf = Buffer.allocUnsafe(len);
        template.copy(buf);
        writeProbe(buf, off, flowIds[f]!, seq, hrtime());
        if (rtp) writeRtp(buf, seq === 0, rtpSeq0[f]! + seq, rtpTs0[f]! + seq * tsStep, ssrc[f]!);
        sockets[f]!.send(buf);
      }
      sent += burst;
      stats.totalSent = sent;
      if (burst > 0) lastSendNs = Number(hrtime() - startNs);
      if (sent >= pacer.slotLimit) {
        // Ended on schedule: the last packet's slot runs one slot past its start.
        const limitedByCount = spec.packets !== null && sent >= spec.packets;
        finish(limitedByCount ? 'count' : opts.durationMs !== null ? 'duration' : 'timeout', Math.max(lastSendNs, pacer.slotStartNs(sent - 1)) + pacer.slotNs);
      } else if (elapsed >= deadlineNs) {
        // Still behind at the deadline (this turn sent what was due before it, up to a burst): stop here.
        finish(opts.durationMs !== null && opts.sendLimitMs === opts.durationMs ? 'duration' : 'timeout', elapsed);
      } else if (due > sent) {
        // Behind schedule: yield to the poll phase (replies) and carry on at once.
        immediate = setImmediate(turn);
      } else {
        timer = setTimeout(turn, Math.max(1, waitForSlotMs(pacer, sent, Number(hrtime() - startNs))));
      }
    };

    if (signal?.aborted) {
      finish('abort', 0);
      return;
    }
    signal?.addEventListener('abort', onAbort, { once: true });
    if (hooks.onProgress) {
      const onProgress = hooks.onProgress;
      progress = setInterval(() => onProgress(sent, stats.totalReceived, Number(hrtime() - startNs) / 1e6), hooks.progressIntervalMs ?? 1000);
    }
    turn();
  });
}
