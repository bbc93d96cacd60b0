/**
 * Running a generator over several sender processes (--procs P). Each child owns the flows i with
 * i mod P = its index and the matching share of the rate and count; all of them open their sockets
 * first and start together on the parent's word. Messages are a tagged union, checked on arrival.
 */
import { fork } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { compiledSibling } from './address.js';
import { GenError } from './errors.js';
import type { ResolvedGenOptions } from './options.js';
import type { ShardOutcome, ShardSpec } from './sender.js';

/** Time a child may take to start Node and open its sockets (10k sockets take about a second here). */
const READY_TIMEOUT_MS = 30_000;
/** Slack beyond the send phase and drain before a silent child is killed. */
const RESULT_SLACK_MS = 30_000;

export type ParentMessage =
  | { cmd: 'run'; opts: ResolvedGenOptions; spec: ShardSpec; progress: boolean }
  | { cmd: 'start' }
  | { cmd: 'abort' };

export type ChildMessage =
  | { cmd: 'ready' }
  | { cmd: 'progress'; sent: number; received: number; elapsedMs: number }
  | { cmd: 'result'; outcome: ShardOutcome }
  | { cmd: 'error'; code: string; message: string };

const CHILD_CMDS = new Set(['ready', 'progress', 'result', 'error']);

export function isChildMessage(m: unknown): m is ChildMessage {
  return typeof m === 'object' && m !== null && CHILD_CMDS.has((m as { cmd?: unknown }).cmd as string);
}

export interface ChildrenHooks {
  signal?: AbortSignal;
  /** Called with the sum over children of their last progress report. */
  onProgress?: (sent: number, received: number, elapsedMs: number) => void;
}

export async function runShardsInChildren(opts: ResolvedGenOptions, specs: ShardSpec[], hooks: ChildrenHooks = {}): Promise<ShardOutcome[]> {
  const entry = compiledSibling(import.meta.url, 'shard-main');
  const children: ChildProcess[] = [];
  const progress = specs.map(() => ({ sent: 0, received: 0, elapsedMs: 0 }));
  const reports = specs.map(() => 0);
  let reported = 0;
  const outcomes: Array<ShardOutcome | undefined> = specs.map(() => undefined);
  let readyCount = 0;
  let fail: ((e: Error) => void) | null = null;
  let onAllReady: (() => void) | null = null;
  let onAllDone: (() => void) | null = null;
  let doneCount = 0;

  const failed = new Promise<never>((_, reject) => {
    fail = reject;
  });
  failed.catch(() => undefined);
  const allReady = new Promise<void>((resolve) => (onAllReady = resolve));
  const allDone = new Promise<void>((resolve) => (onAllDone = resolve));

  const onMessage = (i: number, m: unknown): void => {
    if (!isChildMessage(m)) return;
    switch (m.cmd) {
      case 'ready':
        if (++readyCount === specs.length) onAllReady?.();
        break;
      case 'progress':
        progress[i] = { sent: m.sent, received: m.received, elapsedMs: m.elapsedMs };
        reports[i]!++;
        // One line per round of reports: each child reports on its own clock, and a line per child report put a
        // second line a few ms after the first (its rate over those few ms read millions of pps).
        if (hooks.onProgress && Math.min(...reports) > reported) {
          reported = Math.min(...reports);
          let s = 0;
          let r = 0;
          let e = 0;
          for (const p of progress) {
            s += p.sent;
            r += p.received;
            e = Math.max(e, p.elapsedMs);
          }
          hooks.onProgress(s, r, e);
        }
        break;
      case 'result':
        outcomes[i] = m.outcome;
        if (++doneCount === specs.length) onAllDone?.();
        break;
      case 'error':
        fail?.(new GenError(m.code.startsWith('ERR_GEN_') ? (m.code as GenError['code']) : 'ERR_GEN_CHILD', `sender ${i}: ${m.message}`));
        break;
    }
  };

  const withDeadline = <T>(p: Promise<T>, ms: number, what: string): Promise<T> => {
    let t: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      t = setTimeout(() => reject(new GenError('ERR_GEN_CHILD', `sender processes did not ${what} within ${ms} ms`)), ms);
    });
    return Promise.race([p, failed, timeout]).finally(() => clearTimeout(t));
  };

  const onAbort = (): void => {
    for (const c of children) if (c.connected) c.send({ cmd: 'abort' } satisfies ParentMessage);
  };
  try {
    specs.forEach((spec, i) => {
      const child = fork(entry, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
      children.push(child);
      child.on('message', (m) => onMessage(i, m));
      child.on('exit', (code, sig) => {
        if (outcomes[i] === undefined) fail?.(new GenError('ERR_GEN_CHILD', `sender ${i} exited (code ${code}, signal ${sig}) before its result`));
      });
      child.on('error', (err) => fail?.(new GenError('ERR_GEN_CHILD', `sender ${i}: ${err.message}`, { cause: err })));
      child.send({ cmd: 'run', opts, spec, progress: hooks.onProgress !== undefined } satisfies ParentMessage);
    });
    await withDeadline(allReady, READY_TIMEOUT_MS, 'open their sockets');
    for (const c of children) c.send({ cmd: 'start' } satisfies ParentMessage);
    hooks.signal?.addEventListener('abort', onAbort, { once: true });
    const sendMs = Number.isFinite(opts.sendLimitMs) ? opts.sendLimitMs : 0;
    await withDeadline(allDone, sendMs + opts.drainMs + RESULT_SLACK_MS, 'report');
    return outcomes as ShardOutcome[];
  } finally {
    hooks.signal?.removeEventListener('abort', onAbort);
    for (const c of children) {
      if (c.exitCode === null && c.signalCode === null) {
        if (c.connected) c.disconnect();
        // A child that finished exits on disconnect; one that did not is stopped here.
        setTimeout(() => {
          if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
        }, 2000).unref();
      }
    }
  }
}
