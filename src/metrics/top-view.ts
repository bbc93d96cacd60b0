/**
 * What `flowlb top` draws: a pure function of the latest /status document, the one before it (for rates) and
 * the terminal width. No terminal or network code here (that is commands/top.ts), so tests can render fixed
 * documents and compare lines.
 */

/** The parts of /status (metrics/http.ts buildStatus) that top reads. */
export interface TopWorker {
  readonly id: number;
  readonly pid: number;
  readonly ready: boolean;
  readonly restarts: number;
  readonly cpuUtil: number;
  readonly elu: number;
  /** The event-loop thread's wait for a CPU over wall time in the last report; -1 when the kernel does not say. */
  readonly schedWaitLast: number;
  readonly targetShare: number;
  readonly buckets: number;
  readonly queueDepth: number;
  readonly pps: number;
  readonly dispatchedPackets: number;
  readonly flowsActive: number;
  readonly drops: Readonly<Record<string, number>>;
  readonly rssBytes: number;
}

export interface TopStatus {
  readonly healthy: boolean;
  readonly pid: number;
  readonly handler: string;
  readonly mode: string;
  readonly balancer: string;
  readonly buckets: number;
  readonly epoch: number;
  readonly imbalance: number;
  readonly rounds: number;
  readonly received: number;
  readonly dropped: Readonly<Record<string, number>>;
  /** The cluster's drops by reason over every worker process (null from an older flowlb without it). */
  readonly droppedTotal: Readonly<Record<string, number>> | null;
  readonly migrations: { readonly completed: number; readonly timeouts: number; readonly aborted: number; readonly inFlight: number };
  readonly workers: readonly TopWorker[];
}

/** A status document and when it was fetched (ms, any monotonic clock). */
export interface TopSample {
  readonly status: TopStatus;
  readonly atMs: number;
}

export interface TopViewOptions {
  /** The status URL, shown in the title line. */
  readonly url: string;
  /** Set while the service cannot be reached: the last sample stays on screen under this marker. */
  readonly disconnected?: { readonly error: string; readonly sinceMs: number } | null;
  /** Now, on the clock of `atMs`; used for "last update N s ago" while disconnected. */
  readonly nowMs?: number;
}

/** Narrowest layout drawn; narrower terminals get the lines cut at their width. */
const MIN_WIDTH = 40;
const MIN_BAR = 5;
const MAX_BAR = 40;

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function numberOr0(x: unknown): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0;
}

function countsOf(x: unknown): Record<string, number> {
  if (!isObject(x)) return {};
  const out: Record<string, number> = {};
  for (const [k, v] of Object.entries(x)) out[k] = numberOr0(v);
  return out;
}

/** Checks that `json` is a flowlb /status document and keeps what top needs; null if it is not one. */
export function parseStatus(json: unknown): TopStatus | null {
  if (!isObject(json) || !Array.isArray(json.workers) || typeof json.received !== 'number' || !isObject(json.migrations)) return null;
  const m = json.migrations;
  return {
    healthy: json.healthy === true,
    pid: numberOr0(json.pid),
    handler: typeof json.handler === 'string' ? json.handler : '?',
    mode: typeof json.mode === 'string' ? json.mode : '?',
    balancer: typeof json.balancer === 'string' ? json.balancer : '?',
    buckets: numberOr0(json.buckets),
    epoch: numberOr0(json.epoch),
    imbalance: numberOr0(json.imbalance),
    rounds: numberOr0(json.rounds),
    received: numberOr0(json.received),
    dropped: countsOf(json.dropped),
    droppedTotal: isObject(json.droppedTotal) ? countsOf(json.droppedTotal) : null,
    migrations: { completed: numberOr0(m.completed), timeouts: numberOr0(m.timeouts), aborted: numberOr0(m.aborted), inFlight: numberOr0(m.inFlight) },
    workers: json.workers.filter(isObject).map((w, i) => ({
      id: typeof w.id === 'number' ? w.id : i,
      pid: numberOr0(w.pid),
      ready: w.ready === true,
      restarts: numberOr0(w.restarts),
      cpuUtil: numberOr0(w.cpuUtil),
      elu: numberOr0(w.elu),
      schedWaitLast: typeof w.schedWaitLast === 'number' && Number.isFinite(w.schedWaitLast) ? w.schedWaitLast : -1,
      targetShare: numberOr0(w.targetShare),
      buckets: numberOr0(w.buckets),
      queueDepth: numberOr0(w.queueDepth),
      pps: numberOr0(w.pps),
      dispatchedPackets: numberOr0(w.dispatchedPackets),
      flowsActive: numberOr0(w.flowsActive),
      drops: countsOf(w.drops),
      rssBytes: numberOr0(w.rssBytes),
    })),
  };
}

function sum(counts: Readonly<Record<string, number>>): number {
  let s = 0;
  for (const k in counts) s += counts[k]!;
  return s;
}

/** 1234 -> "1234", 12345 -> "12.3k", 1234567 -> "1.23M". */
export function formatCount(x: number): string {
  const a = Math.abs(x);
  if (a < 10_000) return a >= 100 || Number.isInteger(x) ? String(Math.round(x)) : x.toFixed(1);
  if (a < 1e6) return `${(x / 1e3).toFixed(a < 1e5 ? 1 : 0)}k`;
  if (a < 1e9) return `${(x / 1e6).toFixed(a < 1e7 ? 2 : 1)}M`;
  return `${(x / 1e9).toFixed(2)}G`;
}

function formatBytes(x: number): string {
  if (x < 1024 * 1024) return `${Math.round(x / 1024)}K`;
  if (x < 1024 ** 3) return `${Math.round(x / 1024 / 1024)}M`;
  return `${(x / 1024 ** 3).toFixed(1)}G`;
}

function percent(ratio: number): string {
  return `${Math.round(ratio * 100)}%`;
}

/** `[#####.....]` filled to `ratio` (clamped to 0..1) over `width` characters including the brackets. */
export function bar(ratio: number, width: number): string {
  const inner = Math.max(1, width - 2);
  const r = Number.isFinite(ratio) ? Math.min(1, Math.max(0, ratio)) : 0;
  const filled = Math.round(r * inner);
  return `[${'#'.repeat(filled)}${'.'.repeat(inner - filled)}]`;
}

/** A per-second rate of a counter between two samples; 0 without a previous sample or across a counter reset. */
function rate(now: number, before: number | undefined, seconds: number): number {
  if (before === undefined || seconds <= 0 || now < before) return 0;
  return (now - before) / seconds;
}

function fit(line: string, width: number): string {
  return line.length > width ? line.slice(0, width) : line;
}

function pad(text: string, width: number, left = false): string {
  if (text.length >= width) return text;
  return left ? text + ' '.repeat(width - text.length) : ' '.repeat(width - text.length) + text;
}

/** Columns right of the bar: [header, width, cell of a worker row]. */
type Column = readonly [string, number, (w: TopWorker, pps: number, dropRate: number) => string];

function columnsFor(totalBuckets: number): readonly Column[] {
  return [
    ['CPU', 5, (w) => percent(w.cpuUtil)],
    ['ELU', 5, (w) => percent(w.elu)],
    // Time the loop was ready but waited for a CPU: other processes on its core (or a CPU quota).
    ['WAIT', 5, (w) => (w.schedWaitLast >= 0 ? percent(w.schedWaitLast) : '-')],
    ['SHARE', 7, (w) => `${(w.buckets * 100 / Math.max(1, totalBuckets)).toFixed(1)}%`],
    ['TARGET', 7, (w) => `${(w.targetShare * 100).toFixed(1)}%`],
    ['PPS', 8, (_w, pps) => formatCount(pps)],
    ['DROP/S', 7, (_w, _pps, dropRate) => formatCount(dropRate)],
    ['QUEUE', 7, (w) => formatCount(w.queueDepth)],
    ['FLOWS', 7, (w) => formatCount(w.flowsActive)],
    ['RSS', 6, (w) => formatBytes(w.rssBytes)],
  ];
}

/**
 * Renders one screen. Lines never exceed `width`. Rates (pps, drops/s, migrations/s) come from the difference
 * to `previous`; without one, per-worker pps falls back to the balancer's smoothed figure and other rates show 0.
 */
export function renderTop(current: TopSample, previous: TopSample | null, width: number, opts: TopViewOptions): string[] {
  const w = Math.max(MIN_WIDTH, Math.floor(width));
  const s = current.status;
  const p = previous?.status;
  const dt = previous ? (current.atMs - previous.atMs) / 1000 : 0;
  const lines: string[] = [];

  const up = s.workers.filter((x) => x.ready).length;
  const title = `flowlb top  ${opts.url}  pid ${s.pid}  ${s.handler}  ${s.mode}/${s.balancer}  ${s.healthy ? 'healthy' : 'NOT HEALTHY'}`;
  lines.push(title);
  if (opts.disconnected) {
    const ago = opts.nowMs !== undefined ? Math.max(0, Math.round((opts.nowMs - current.atMs) / 1000)) : null;
    lines.push(`DISCONNECTED: ${opts.disconnected.error} (retrying${ago !== null ? `; last update ${ago}s ago` : ''})`);
  }

  // The cluster's total over every worker process: the live workers' own counts restart with a replacement (the
  // header's total fell to 0 when a worker that had dropped packets was killed).
  const totalDrops = (x: TopStatus): number => x.droppedTotal !== null ? sum(x.droppedTotal) : sum(x.dropped) + x.workers.reduce((a, w) => a + sum(w.drops), 0);
  const drops = totalDrops(s);
  const prevDrops = p ? totalDrops(p) : undefined;
  const migrations = s.migrations.completed + s.migrations.timeouts + s.migrations.aborted;
  const prevMigrations = p ? p.migrations.completed + p.migrations.timeouts + p.migrations.aborted : undefined;
  lines.push(
    `rx ${formatCount(rate(s.received, p?.received, dt))} pps (${formatCount(s.received)} total)` +
    `   drops ${formatCount(rate(drops, prevDrops, dt))}/s (${formatCount(drops)} total)` +
    `   workers ${up}/${s.workers.length} up   buckets ${s.buckets}   epoch ${s.epoch}`,
  );
  lines.push(
    `migrations ${rate(migrations, prevMigrations, dt).toFixed(1)}/s (done ${s.migrations.completed}, timeout ${s.migrations.timeouts}, ` +
    `aborted ${s.migrations.aborted}, in flight ${s.migrations.inFlight})   imbalance ${s.imbalance.toFixed(3)}   rounds ${s.rounds}`,
  );
  lines.push('');

  // Layout: "  W  PID     " then the bar (flexible), then fixed columns; the bar takes what is left.
  const leftWidth = 4 + 1 + 8;
  const columns = columnsFor(s.buckets);
  const rightWidth = columns.reduce((a, [, cw]) => a + cw, 0);
  const barWidth = Math.min(MAX_BAR, Math.max(MIN_BAR, w - leftWidth - rightWidth - 2));
  lines.push(pad('W', 4) + ' ' + pad('PID', 8, true) + pad('LOAD', barWidth, true) + '  ' + columns.map(([h, cw]) => pad(h, cw)).join(''));

  const prevById = new Map((p?.workers ?? []).map((x) => [x.id, x]));
  for (const x of s.workers) {
    const before = prevById.get(x.id);
    const pps = before ? rate(x.dispatchedPackets, before.dispatchedPackets, dt) : x.pps;
    // A restarted worker's drop counts start again at 0: rate() treats the fall as no drops.
    const dropRate = before && before.pid === x.pid ? rate(sum(x.drops), sum(before.drops), dt) : 0;
    const left = pad(String(x.id), 4) + ' ' + pad(x.pid ? String(x.pid) : '-', 8, true);
    if (!x.ready) {
      lines.push(`${left}${pad(`down (restarts ${x.restarts})`.slice(0, barWidth), barWidth, true)}  ${columns.map(([, cw, f]) => pad(f(x, pps, dropRate), cw)).join('')}`);
      continue;
    }
    lines.push(`${left}${bar(x.cpuUtil, barWidth)}  ${columns.map(([, cw, f]) => pad(f(x, pps, dropRate), cw)).join('')}`);
  }
  lines.push('');
  lines.push('q or Ctrl-C quits   LOAD = worker CPU (1 core = full)   SHARE = buckets owned   WAIT = ready, waiting for a CPU');
  return lines.map((l) => fit(l, w));
}
