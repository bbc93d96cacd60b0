/**
 * The orphan watchdog of a worker process: a small thread that ends the process when its primary is gone.
 *
 * A worker learns that its primary died from the IPC channel closing ('disconnect'), which its event loop must
 * run to see. A worker whose loop is stuck (a handler in an endless loop, a synchronous call that never returns)
 * never sees it: with the primary SIGKILLed, nobody is left to apply the stall timeout either, and the worker
 * spins on a core for ever, holding its sockets. This thread runs on its own isolate and event loop, so it sees
 * the parent change (the orphan is re-parented) even while the main thread is stuck, and SIGKILLs its own
 * process once the main thread has had `graceMs` to stop by itself (the normal path: 'disconnect', a drain that
 * an orphan cuts short, exit).
 *
 * Cost: one thread per worker, asleep except for one getppid() every `everyMs`; about 10 MB of RSS (an isolate).
 */
import { Worker } from 'node:worker_threads';

/** The thread's code (CommonJS, run with eval): no import of flowlb, so it starts in a few ms. */
const THREAD = `
const { workerData } = require('node:worker_threads');
const { parent, everyMs, graceMs } = workerData;
let goneSince = -1;
setInterval(() => {
  if (process.ppid === parent) { goneSince = -1; return; }
  const now = Date.now();
  if (goneSince < 0) goneSince = now;
  else if (now - goneSince >= graceMs) process.kill(process.pid, 'SIGKILL');
}, everyMs);
`;

export interface OrphanWatchdogOptions {
  /** How often the parent pid is checked, in ms. */
  readonly everyMs: number;
  /** How long an orphan may take to stop by itself before it is killed, in ms. */
  readonly graceMs: number;
}

/**
 * Starts the watchdog for the current process, whose parent now is the primary. Returns the thread (unref'd: it
 * never keeps the process alive), or null when no thread could be started (the worker then runs without it and
 * relies on 'disconnect', as before; the caller logs it).
 */
export function startOrphanWatchdog(opts: OrphanWatchdogOptions): Worker | null {
  try {
    const w = new Worker(THREAD, {
      eval: true,
      workerData: { parent: process.ppid, everyMs: opts.everyMs, graceMs: opts.graceMs },
      stdout: false,
      stderr: false,
    });
    w.unref();
    // An error in the thread (it has none of its own to make) must not become an uncaught one in the worker.
    w.on('error', () => {});
    return w;
  } catch {
    return null;
  }
}
