/**
 * How long this thread waited for a CPU: the kernel's per-task scheduler accounting, /proc/thread-self/schedstat
 * ("<ns on a CPU> <ns runnable but waiting on a run queue> <timeslices>").
 *
 * Why the balancer wants it: a worker's cpu/elu (CPU time over event-loop busy time) shows contention only while
 * the loop is inside a callback. A worker sharing its core with a CPU hog also waits for the CPU each time it wakes
 * up with a packet, and that wait counts as idle loop time. Measured beside a busy loop on the same core (250 ms
 * samples, bench/interference.ts): the hogged worker's cpu/elu read 0.50-0.96 from one sample to the next, the same
 * range as a free worker's 0.76-1.0, while its share of runnable time spent on a CPU, run / (run + wait), read
 * 0.49-0.60 against 0.82-0.95 once the hog had gone. The latter tells a hog leaving from a lull in one or two
 * reports; the former could not (see Balancer.watchStep). A hog arriving is plain in cpu/elu already.
 *
 * The report timer runs on the worker's main thread, which is the thread that runs the event loop, so
 * /proc/thread-self is the loop's thread (helper threads are not counted: they do not serve packets). Control plane
 * only: read once per load report through a descriptor kept open.
 */
import fs from 'node:fs';

/** [ns on a CPU, ns waiting on a run queue] from schedstat's text, or null if it is not that format. */
export function parseSchedStat(text: string): [number, number] | null {
  const f = text.trim().split(/\s+/);
  if (f.length < 2) return null;
  const run = Number(f[0]), wait = Number(f[1]);
  return Number.isFinite(run) && Number.isFinite(wait) && run >= 0 && wait >= 0 ? [run, wait] : null;
}

/** Run and wait time of one report interval, as fractions of its wall time; -1 for both when unknown. */
export interface SchedSample {
  run: number;
  wait: number;
}

export class SchedStatReader {
  private fd = -1;
  /** Files to open, in order of preference; emptied by close(). */
  private files: string[];
  private readonly buf = Buffer.alloc(128);
  private lastRun = -1;
  private lastWait = -1;
  private lastWallMs = 0;
  private readonly out: SchedSample = { run: -1, wait: -1 };

  /**
   * `file`: the schedstat file of the calling thread (a test may point it elsewhere). By default
   * /proc/thread-self (Linux >= 3.17), else the main thread's own task entry (its thread id is the process id):
   * the worker constructs this on its main thread.
   */
  constructor(file?: string) {
    this.files = file !== undefined ? [file] : ['/proc/thread-self/schedstat', `/proc/self/task/${process.pid}/schedstat`];
    this.open();
  }

  /** Opens the first file that opens. Tried again at every sample while none is open: a worker that started out of
   * descriptors (EMFILE) gets the figures once it has one to spare. */
  private open(): void {
    for (const f of this.files) {
      try { this.fd = fs.openSync(f, 'r'); return; } catch { this.fd = -1; }
    }
  }

  get available(): boolean {
    return this.fd >= 0;
  }

  /** Cumulative wait for a CPU at the last sample, microseconds; -1 if none was read. */
  get waitUs(): number {
    return this.lastWait >= 0 ? this.lastWait / 1000 : -1;
  }

  /**
   * The run and wait fractions since the previous call (wall time `nowMs`, performance.now()); -1 for both on
   * the first call, when the file cannot be read, or when the counters went backwards. The returned object is
   * reused.
   */
  sample(nowMs: number): SchedSample {
    const now = this.readNow();
    const dtNs = (nowMs - this.lastWallMs) * 1e6;
    this.out.run = this.out.wait = -1;
    if (now !== null) {
      if (this.lastRun >= 0 && dtNs > 0 && now[0] >= this.lastRun && now[1] >= this.lastWait) {
        this.out.run = (now[0] - this.lastRun) / dtNs;
        this.out.wait = (now[1] - this.lastWait) / dtNs;
      }
      this.lastRun = now[0];
      this.lastWait = now[1];
    }
    this.lastWallMs = nowMs;
    return this.out;
  }

  close(): void {
    if (this.fd >= 0) try { fs.closeSync(this.fd); } catch { /* closed */ }
    this.fd = -1;
    this.files = [];
  }

  private readNow(): [number, number] | null {
    if (this.fd < 0) this.open();
    if (this.fd < 0) return null;
    try {
      // procfs regenerates the text on a read at offset 0: one descriptor serves every report.
      const n = fs.readSync(this.fd, this.buf, 0, this.buf.length, 0);
      return parseSchedStat(this.buf.toString('latin1', 0, n));
    } catch {
      return null;
    }
  }
}
