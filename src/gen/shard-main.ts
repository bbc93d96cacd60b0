/**
 * Entry point of a sender child process (see procs.ts): waits for its share, opens its sockets, reports
 * ready, sends on the parent's start, reports the result and exits when the parent disconnects.
 */
import { GenError } from './errors.js';
import type { ChildMessage, ParentMessage } from './procs.js';
import { runShard } from './sender.js';

function send(m: ChildMessage): void {
  if (process.connected) process.send!(m);
}

let started: (() => void) | null = null;
const abort = new AbortController();

process.on('message', (raw: unknown) => {
  const m = raw as ParentMessage;
  if (m.cmd === 'start') {
    started?.();
  } else if (m.cmd === 'abort') {
    abort.abort();
  } else if (m.cmd === 'run') {
    runShard(m.opts, m.spec, {
      signal: abort.signal,
      onReady: () =>
        new Promise<void>((resolve) => {
          started = resolve;
          send({ cmd: 'ready' });
        }),
      ...(m.progress ? { onProgress: (sent: number, received: number, elapsedMs: number) => send({ cmd: 'progress', sent, received, elapsedMs }), progressIntervalMs: m.opts.progressIntervalMs } : {}),
    }).then(
      (outcome) => send({ cmd: 'result', outcome }),
      (err: unknown) => send({ cmd: 'error', code: err instanceof GenError ? err.code : 'ERR_GEN_CHILD', message: err instanceof Error ? err.message : String(err) }),
    );
  }
});
// Ctrl-C reaches the whole process group: end the send phase and still report, as the parent does, instead
// of dying before the result is in.
process.on('SIGINT', () => abort.abort());
process.on('SIGTERM', () => abort.abort());
// Leave when the parent does, whatever state this process is in.
process.on('disconnect', () => process.exit(0));
