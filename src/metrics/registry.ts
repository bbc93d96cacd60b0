/**
 * Prometheus metrics for the whole cluster, read at scrape time. Nothing here runs on the packet path: the
 * primary's counters (typed arrays in the Dispatcher, plain fields of the Balancer and Migrator) and the latest
 * report of every worker are copied into one plain `ClusterSnapshot` per scrape, synchronously, so every value of
 * one exposition comes from the same instant (received = dispatched + primary drops + held holds within it).
 *
 * The cluster metrics are not prom-client Counters or Gauges: those are meant to be incremented, and copying
 * absolute totals into them would need reset()+inc() per series per scrape. Each metric here is a small object
 * with the shape prom-client's Registry reads (`name`, `get()`, `reset()`), whose `get()` turns the snapshot into
 * samples; histograms are written as their `_bucket`/`_sum`/`_count` samples directly, from the cumulative
 * counts the migrator and the workers keep, so no observation is ever lost or replayed.
 *
 * docs/metrics.md describes every metric; test/metrics.test.ts checks that it names every one emitted.
 */
import net from 'node:net';
import client from 'prom-client';

import { formatEndpoint } from '../config.js';
import { DROP_MIGRATION_LATE, DROP_REASON_COUNT, DROP_REASONS } from '../datapath/counters.js';
import { MIGRATION_BUCKETS_S } from '../control/migrator.js';
import { LATENCY_BOUNDS_MS } from '../control/protocol.js';
import { stalledAfterMs, type WorkerSet } from '../control/worker-set.js';
import type { ServiceView } from './http.js';
import { socketDrops } from './socket-drops.js';

export interface Metrics {
  readonly contentType: string;
  render(): Promise<string>;
}

// ---- the handler counters a worker reports (`handlerCounters`), as the proxy handler is asked to emit them ----

/**
 * Per-backend counters arrive as `<counter>@<backend key>` (the key as proxy's backendKey() writes it,
 * "10.0.0.1:53" or "[::1]:53"), cumulative for the reporting process. Other keys are handler-wide.
 */
export const BACKEND_COUNTER_KEYS = ['requests', 'responses', 'refused', 'send_errors', 'socket_errors', 'connect_errors', 'local_errors', 'timeouts', 'probe_ok', 'probe_failed', 'marked_down'] as const;
export type BackendCounterKey = (typeof BACKEND_COUNTER_KEYS)[number];
/** Handler-wide drop counters of the proxy (packets a worker handled but the proxy could not forward). */
export const PROXY_DROP_KEYS = {
  dropped_no_backend: 'no_backend',
  dropped_connect_failed: 'connect_failed',
  dropped_queue_full: 'preconnect_queue_full',
  dropped_migrating: 'migrating',
} as const;
/** Handler-wide gauge of the proxy: upstream sockets open now. Not accumulated over dead processes. */
export const PROXY_ACTIVE_UPSTREAMS_KEY = 'active_upstreams';
/** Per-backend gauge of the proxy (`down@<backend>`): 1 while the worker's passive health has it out of its table. */
export const BACKEND_DOWN_GAUGE = 'down';

/** Keys whose value is a level, not a count: summed over live processes only, never kept from a dead one. */
function isGaugeKey(key: string): boolean {
  return key === PROXY_ACTIVE_UPSTREAMS_KEY || key.startsWith(`${BACKEND_DOWN_GAUGE}@`);
}

/** The key a backend is known by in handler counters and the `backend` label (same as proxy.ts backendKey). */
export function backendLabel(host: string, port: number): string {
  return net.isIPv6(host) ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Splits `requests@10.0.0.1:53` into its counter and backend; null for handler-wide keys. */
export function splitBackendKey(key: string): { counter: string; backend: string } | null {
  const at = key.indexOf('@');
  if (at <= 0 || at === key.length - 1) return null;
  return { counter: key.slice(0, at), backend: key.slice(at + 1) };
}

/**
 * Keeps handler counter totals monotonic across worker restarts: a lane's new process starts its handler
 * counters at zero, so when a lane's pid changes, the last values seen from the old process are kept as
 * retired. Counts the old process made after the last scrape that saw them are lost (WorkerSet keeps exact
 * retired totals for the worker's own counters; handler counters are not among them yet).
 */
export class HandlerCounterLedger {
  private readonly pids: number[] = [];
  private readonly last: (Record<string, number> | null)[] = [];
  private readonly retired = new Map<string, number>();

  /** Cumulative totals per key over every process that served any lane; `gauges` sums gauges of live processes. */
  observe(lanes: ReadonlyArray<{ pid: number; counters: Record<string, number> | null | undefined }>): {
    totals: Map<string, number>; gauges: Map<string, number>;
  } {
    const gauges = new Map<string, number>();
    lanes.forEach((lane, i) => {
      if (this.pids[i] !== lane.pid) {
        const old = this.last[i];
        if (old) {
          for (const [k, x] of Object.entries(old)) {
            if (!isGaugeKey(k)) this.retired.set(k, (this.retired.get(k) ?? 0) + x);
          }
        }
        this.pids[i] = lane.pid;
        this.last[i] = null;
      }
      if (lane.counters) this.last[i] = lane.counters;
    });
    const totals = new Map(this.retired);
    for (const c of this.last) {
      if (!c) continue;
      for (const [k, x] of Object.entries(c)) {
        if (typeof x !== 'number' || !Number.isFinite(x)) continue;
        if (isGaugeKey(k)) gauges.set(k, (gauges.get(k) ?? 0) + x);
        else totals.set(k, (totals.get(k) ?? 0) + x);
      }
    }
    return { totals, gauges };
  }
}

/**
 * A backend's health as traffic and the health-check probes show it: it is down when, within the last HEALTH_WINDOW_MS to
 * 2 x HEALTH_WINDOW_MS, it refused datagrams (ICMP port unreachable), its upstream connect failed or it was silent
 * for the proxy's responseTimeout, and sent no response; up again once a window passes without new failures (or
 * with a response). A backend that silently drops everything stays up unless responseTimeout is set; one that never
 * answers by design stays up. (Workers that took it out of their table make it down too: takeSnapshot.)
 *
 * Judged against a reference taken at least HEALTH_WINDOW_MS ago, not against the previous scrape: "since the
 * previous scrape" made reading /metrics change the answer (two scrapes 17 ms apart read 0 then 1, so a second
 * reader, an HA pair or a curl, could take the 0 away from Prometheus).
 */
export class BackendHealth {
  private readonly seen = new Map<string, { responses: number; failures: number; atMs: number; up: boolean }>();

  judge(backend: string, responses: number, failures: number, nowMs = performance.now()): boolean {
    const s = this.seen.get(backend);
    if (!s) {
      // First sight: no history to diff; a backend that failed and never answered is down.
      const up = !(failures > 0 && responses === 0);
      this.seen.set(backend, { responses, failures, atMs: nowMs, up });
      return up;
    }
    const answered = responses > s.responses;
    const failed = failures > s.failures;
    // Down only while it keeps failing without answering: a backend out of every table gets no traffic, so "no news"
    // must mean up (it stayed 0 for ever after one burst of refusals), and the workers' tables say the rest.
    const up = answered || !failed;
    if (nowMs - s.atMs >= HEALTH_WINDOW_MS) {
      s.responses = responses;
      s.failures = failures;
      s.atMs = nowMs;
    }
    return up;
  }
}

/** BackendHealth's reference age: failures are looked for over the last 5 to 10 s. */
export const HEALTH_WINDOW_MS = 5_000;

// ---- the snapshot ----

export interface LaneSnapshot {
  readonly up: boolean;
  readonly restarts: number;
  readonly dispatchedPackets: number;
  readonly dispatchedBytes: number;
  readonly batches: number;
  /** Worker counters: retired processes of the lane plus the live process's latest report. */
  readonly rxPackets: number;
  readonly rxBytes: number;
  readonly handled: number;
  readonly replies: number;
  readonly replyBytes: number;
  readonly replyErrors: number;
  readonly handlerCrashes: number;
  readonly flowsCreated: number;
  readonly flowsExpired: number;
  /** Estimated packets lost with this lane's processes that died (WorkerSet.recordLost). */
  readonly lostOnExit: number;
  readonly drops: readonly number[];
  /** From the live process's latest report; 0 while the lane has none. */
  readonly flowsActive: number;
  readonly queueDepth: number;
  readonly peakQueueDepth: number;
  readonly activeQueues: number;
  readonly rssBytes: number;
  /** Cumulative CPU of the live process, if its report carries `cpuUs` (seconds); null otherwise. */
  readonly cpuSeconds: number | null;
  /** Cumulative time the live process's event-loop thread waited for a CPU (seconds), if the kernel says; null otherwise. */
  readonly cpuWaitSeconds: number | null;
  /** Packet mode: the lane's new packets currently go to another worker. */
  readonly spilling: boolean;
  /** The balancer's smoothed view. */
  readonly cpuUtil: number;
  readonly elu: number;
  /** The worker's cgroup CPU quota in cores, 0 = none. */
  readonly cpuLimit: number;
  readonly imbalanceIndex: number;
  readonly targetShare: number;
  readonly buckets: number;
}

export interface BackendSnapshot {
  readonly counters: Readonly<Record<BackendCounterKey, number>>;
  readonly up: boolean;
  /** Workers whose passive health has the backend out of their table now. */
  readonly downWorkers: number;
}

export interface ClusterSnapshot {
  readonly handler: string;
  readonly mode: string;
  readonly balancer: string;
  readonly queueLimit: number;
  readonly rxPackets: number;
  readonly rxBytes: number;
  /** Drops counted by the primary, by DROP_REASONS index. */
  readonly primaryDrops: readonly number[];
  /** Primary and worker drops, by DROP_REASONS index. */
  readonly drops: readonly number[];
  readonly held: number;
  readonly epoch: number;
  /** SIGHUP reloads applied and rejected, and whether the latest one was applied (true before any). */
  readonly reloads: { readonly ok: number; readonly rejected: number; readonly lastOk: boolean; readonly restartNeeded: number };
  readonly lanes: readonly LaneSnapshot[];
  readonly latencyCounts: readonly number[];
  readonly latencySumMs: number;
  readonly migrations: {
    readonly done: number; readonly timeout: number; readonly aborted: number; readonly inFlight: number;
    readonly durationCounts: readonly number[]; readonly durationSumS: number;
    readonly extended: number; readonly lateReleases: number; readonly lateFlowsImported: number; readonly lateFlowsLost: number;
  };
  readonly rounds: number;
  readonly indexSteps: number;
  readonly overloadSpills: number;
  readonly movesPlanned: number;
  /** Packet mode: packets redirected away from an overloaded worker, and queued packets it handed back. */
  readonly spilledPackets: number;
  readonly shedPackets: number;
  readonly imbalance: number;
  readonly backends: ReadonlyMap<string, BackendSnapshot>;
  readonly proxyDrops: ReadonlyMap<string, number>;
  readonly proxyActiveUpstreams: number | null;
  /** Per front listener ("host:port"): datagrams the kernel dropped before flowlb read them; null = unknown. */
  readonly socketDrops: readonly { readonly listener: string; readonly drops: number | null }[];
}

function addArray(into: number[], from: ArrayLike<number> | undefined): void {
  if (!from) return;
  for (let i = 0; i < from.length && i < into.length; i++) into[i]! += from[i] ?? 0;
}

/**
 * A lane's drops by reason over every process that served it (the retired ones' totals and the live one's last
 * report) plus migration_late, counted for it by the migrator: what flowlb_dropped_packets_total sums.
 */
export function laneDropTotals(w: WorkerSet, lateDropped: ArrayLike<number>, lane: number): number[] {
  const laneDrops = new Array<number>(DROP_REASON_COUNT).fill(0);
  addArray(laneDrops, w.retired(lane).drops);
  addArray(laneDrops, w.lastReport(lane)?.counters.drops);
  laneDrops[DROP_MIGRATION_LATE]! += lateDropped[lane] ?? 0;
  return laneDrops;
}

function num(x: number | undefined): number {
  return typeof x === 'number' && Number.isFinite(x) ? x : 0;
}

/** Reads everything one scrape needs, synchronously (so no packet is counted in one place and not another). */
export function takeSnapshot(v: ServiceView, ledger: HandlerCounterLedger, health: BackendHealth): ClusterSnapshot {
  const d = v.dispatcher, w = v.workers, b = v.balancer, m = v.migrator;
  const n = v.config.workers;
  const owned = d.table.countsBy(n);
  const drops = Array.from(d.drops, num);
  const latencyCounts = new Array<number>(LATENCY_BOUNDS_MS.length + 1).fill(0);
  let latencySumMs = 0;
  const lanes: LaneSnapshot[] = [];
  const handlerLanes: { pid: number; counters: Record<string, number> | null | undefined }[] = [];
  for (let lane = 0; lane < n; lane++) {
    const r = w.lastReport(lane);
    const c = r?.counters;
    const t = w.retired(lane);
    const laneDrops = laneDropTotals(w, m.lateDropped, lane);
    addArray(drops, laneDrops);
    addArray(latencyCounts, t.latencyCounts);
    addArray(latencyCounts, c?.latencyCounts);
    latencySumMs += t.latencySumMs + num(c?.latencySumMs);
    const cpuUs = r?.cpuUs, waitUs = r?.schedWaitUs;
    lanes.push({
      up: w.isUp(lane, stalledAfterMs(v.config.balancer.reportIntervalMs)),
      restarts: w.restarts(lane),
      dispatchedPackets: d.lanePackets[lane]!,
      dispatchedBytes: d.laneBytes[lane]!,
      batches: d.laneBatches[lane]!,
      rxPackets: t.rxPackets + num(c?.rxPackets),
      rxBytes: t.rxBytes + num(c?.rxBytes),
      handled: t.handled + num(c?.handled),
      replies: t.replies + num(c?.replies),
      replyBytes: t.replyBytes + num(c?.replyBytes),
      replyErrors: t.replyErrors + num(c?.replyErrors),
      handlerCrashes: t.handlerCrashes + num(c?.handlerCrashes),
      flowsCreated: t.flowsCreated + num(c?.flowsCreated),
      flowsExpired: t.flowsExpired + num(c?.flowsExpired),
      lostOnExit: w.lostOnExit(lane),
      drops: laneDrops,
      flowsActive: num(c?.flowsActive),
      queueDepth: num(r?.queueDepth),
      peakQueueDepth: num(r?.peakQueueDepth),
      activeQueues: num(r?.activeQueues),
      rssBytes: num(r?.memRss),
      cpuSeconds: typeof cpuUs === 'number' && Number.isFinite(cpuUs) ? cpuUs / 1e6 : null,
      cpuWaitSeconds: typeof waitUs === 'number' && Number.isFinite(waitUs) && waitUs >= 0 ? waitUs / 1e6 : null,
      spilling: (d.spillTo[lane] ?? -1) >= 0,
      cpuUtil: num(b.model.cpuUtil[lane]),
      elu: num(b.model.elu[lane]),
      cpuLimit: num(b.model.cpuLimit[lane]),
      imbalanceIndex: num(b.indexes[lane]),
      targetShare: num(b.shares[lane]),
      buckets: owned[lane]!,
    });
    handlerLanes.push({ pid: w.pid(lane), counters: r?.handlerCounters });
  }

  const { totals, gauges } = ledger.observe(handlerLanes);
  const backendRows = new Map<string, Record<BackendCounterKey, number>>();
  const blank = (): Record<BackendCounterKey, number> =>
    Object.fromEntries(BACKEND_COUNTER_KEYS.map((k) => [k, 0])) as Record<BackendCounterKey, number>;
  // Configured backends have series from the start, before any flow picked them.
  if (v.config.handler === 'proxy') for (const be of v.config.backends) backendRows.set(backendLabel(be.host, be.port), blank());
  const proxyDrops = new Map<string, number>();
  let sawProxy = v.config.handler === 'proxy';
  for (const [key, x] of totals) {
    const split = splitBackendKey(key);
    if (split) {
      if (!(BACKEND_COUNTER_KEYS as readonly string[]).includes(split.counter)) continue;
      let row = backendRows.get(split.backend);
      // The proxy's counters are append-only per handler: a backend a reload removed keeps its keys, but not its
      // series (it read up, with frozen counters, for ever). A handler module's backends are whatever it reports.
      if (!row && v.config.handler === 'proxy') continue;
      if (!row) backendRows.set(split.backend, (row = blank()));
      row[split.counter as BackendCounterKey] += x;
      sawProxy = true;
    } else if (Object.hasOwn(PROXY_DROP_KEYS, key)) {
      const reason = PROXY_DROP_KEYS[key as keyof typeof PROXY_DROP_KEYS];
      proxyDrops.set(reason, (proxyDrops.get(reason) ?? 0) + x);
      sawProxy = true;
    }
  }
  if (sawProxy) for (const reason of Object.values(PROXY_DROP_KEYS)) if (!proxyDrops.has(reason)) proxyDrops.set(reason, 0);
  const backends = new Map<string, BackendSnapshot>();
  for (const [key, counters] of [...backendRows].sort(([a], [z]) => (a < z ? -1 : a > z ? 1 : 0))) {
    const downWorkers = gauges.get(`${BACKEND_DOWN_GAUGE}@${key}`) ?? 0;
    const judged = health.judge(key, counters.responses + counters.probe_ok, counters.refused + counters.connect_errors + counters.timeouts + counters.probe_failed);
    backends.set(key, { counters, up: judged && downWorkers === 0, downWorkers });
  }

  return {
    handler: v.config.handler,
    mode: v.config.balancer.mode,
    balancer: v.config.balancer.enabled ? 'adaptive' : 'static',
    queueLimit: v.config.balancer.queueLimit,
    rxPackets: d.rxPackets,
    rxBytes: d.rxBytes,
    primaryDrops: Array.from(d.drops, num),
    drops,
    held: d.heldTotal(),
    epoch: d.table.epoch,
    reloads: { ok: v.reloads?.ok ?? 0, rejected: v.reloads?.rejected ?? 0, lastOk: v.reloads?.lastOk ?? true, restartNeeded: v.reloads?.restartNeeded?.length ?? 0 },
    lanes,
    latencyCounts,
    latencySumMs,
    migrations: {
      done: m.completed, timeout: m.timeouts, aborted: m.aborted, inFlight: m.inFlight,
      durationCounts: Array.from(m.durationCounts), durationSumS: m.durationSumS,
      extended: m.extended, lateReleases: m.lateReleases, lateFlowsImported: m.lateFlowsImported, lateFlowsLost: m.lateFlowsLost,
    },
    rounds: b.rounds,
    indexSteps: b.indexSteps,
    overloadSpills: b.overloadSpills,
    movesPlanned: b.movesPlanned,
    spilledPackets: d.spilledPackets,
    shedPackets: b.shedPackets,
    imbalance: num(b.lastImbalance),
    backends,
    proxyDrops,
    proxyActiveUpstreams: sawProxy ? gauges.get(PROXY_ACTIVE_UPSTREAMS_KEY) ?? 0 : null,
    socketDrops: socketDrops(v.udp).map((drops, i) => ({ listener: formatEndpoint(v.udp[i]!), drops })),
  };
}

// ---- metric definitions: one declared list feeds the exposition ----

type MetricType = 'counter' | 'gauge' | 'histogram';
type Labels = Record<string, string>;
interface Sample { value: number; labels?: Labels; metricName?: string }

interface MetricDef {
  readonly name: string;
  readonly type: MetricType;
  readonly help: string;
  readonly read: (s: ClusterSnapshot) => Sample[];
}

function perWorker(read: (l: LaneSnapshot) => number): (s: ClusterSnapshot) => Sample[] {
  return (s) => s.lanes.map((l, i) => ({ value: read(l), labels: { worker: String(i) } }));
}

/** Like perWorker, but a worker whose figure is unknown (null) has no sample at all. */
function perWorkerKnown(read: (l: LaneSnapshot) => number | null): (s: ClusterSnapshot) => Sample[] {
  return (s) => s.lanes.flatMap((l, i) => {
    const value = read(l);
    return value === null ? [] : [{ value, labels: { worker: String(i) } }];
  });
}

function perBackend(read: (b: BackendSnapshot) => number): (s: ClusterSnapshot) => Sample[] {
  return (s) => [...s.backends].map(([backend, b]) => ({ value: read(b), labels: { backend } }));
}

/** Bounds as Prometheus `le` labels; rounded so 0.25 ms prints as 0.00025, not 0.00025000000000000006. */
function leLabel(bound: number): string {
  return String(Number(bound.toPrecision(12)));
}

/** `_bucket` (cumulative, ending in +Inf), `_sum` and `_count` samples from per-bucket counts (last = overflow). */
export function histogramSamples(name: string, boundsS: readonly number[], counts: readonly number[], sumS: number): Sample[] {
  const out: Sample[] = [];
  let cumulative = 0;
  for (let i = 0; i < boundsS.length; i++) {
    cumulative += counts[i] ?? 0;
    out.push({ metricName: `${name}_bucket`, labels: { le: leLabel(boundsS[i]!) }, value: cumulative });
  }
  for (let i = boundsS.length; i < counts.length; i++) cumulative += counts[i] ?? 0;
  out.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, value: cumulative });
  out.push({ metricName: `${name}_sum`, value: sumS });
  out.push({ metricName: `${name}_count`, value: cumulative });
  return out;
}

const LATENCY_BOUNDS_S = LATENCY_BOUNDS_MS.map((ms) => ms / 1000);
const BACKEND_ERROR_KINDS: readonly [BackendCounterKey, string][] = [
  ['refused', 'refused'], ['send_errors', 'send'], ['socket_errors', 'socket'], ['connect_errors', 'connect'], ['local_errors', 'local'],
  ['timeouts', 'timeout'], ['probe_failed', 'probe'],
];

export const METRIC_DEFS: readonly MetricDef[] = [
  {
    name: 'flowlb_info', type: 'gauge', help: 'Always 1; labels name the handler, the balancing mode and whether the balancer is adaptive or static.',
    read: (s) => [{ value: 1, labels: { handler: s.handler, mode: s.mode, balancer: s.balancer } }],
  },
  // primary: the packet path
  { name: 'flowlb_received_packets_total', type: 'counter', help: 'Datagrams the primary read from the front sockets.', read: (s) => [{ value: s.rxPackets }] },
  { name: 'flowlb_received_bytes_total', type: 'counter', help: 'Payload bytes of the datagrams the primary read.', read: (s) => [{ value: s.rxBytes }] },
  {
    name: 'flowlb_dispatched_packets_total', type: 'counter', help: 'Datagrams the primary put into a worker\'s channel (including held packets delivered after a migration).',
    read: perWorker((l) => l.dispatchedPackets),
  },
  { name: 'flowlb_dispatched_bytes_total', type: 'counter', help: 'Payload bytes the primary put into a worker\'s channel.', read: perWorker((l) => l.dispatchedBytes) },
  { name: 'flowlb_batches_total', type: 'counter', help: 'Writes (batches of frames) the primary made to a worker\'s channel.', read: perWorker((l) => l.batches) },
  {
    name: 'flowlb_dropped_packets_total', type: 'counter', help: 'Datagrams dropped, by reason, in the primary and in the workers (a packet is dropped at most once).',
    read: (s) => DROP_REASONS.map((reason, i) => ({ value: s.drops[i] ?? 0, labels: { reason } })),
  },
  {
    name: 'flowlb_primary_dropped_packets_total', type: 'counter', help: 'The part of flowlb_dropped_packets_total dropped by the primary before dispatch.',
    read: (s) => DROP_REASONS.map((reason, i) => ({ value: s.primaryDrops[i] ?? 0, labels: { reason } })),
  },
  {
    name: 'flowlb_socket_receive_drops_total', type: 'counter',
    help: 'Datagrams the kernel dropped at a front socket before flowlb read them (receive buffer full), from /proc/net/udp.',
    read: (s) => s.socketDrops.filter((x) => x.drops !== null).map((x) => ({ value: x.drops!, labels: { listener: x.listener } })),
  },
  { name: 'flowlb_held_packets', type: 'gauge', help: 'Datagrams the primary holds for buckets being migrated.', read: (s) => [{ value: s.held }] },
  {
    name: 'flowlb_config_reloads_total', type: 'counter', help: 'Config reloads (SIGHUP) by outcome: ok (applied) or rejected (the previous config stays).',
    read: (s) => [{ value: s.reloads.ok, labels: { outcome: 'ok' } }, { value: s.reloads.rejected, labels: { outcome: 'rejected' } }],
  },
  {
    name: 'flowlb_config_last_reload_successful', type: 'gauge', help: '0 if the latest config reload was rejected (the previous config still runs), else 1 (1 before any reload).',
    read: (s) => [{ value: s.reloads.lastOk ? 1 : 0 }],
  },
  {
    name: 'flowlb_config_restart_needed_settings', type: 'gauge',
    help: 'Settings of the config file the last applied reload left unchanged because they need a restart (workers, buckets, listen, ...): the service runs other values than its file until restarted.',
    read: (s) => [{ value: s.reloads.restartNeeded }],
  },
  { name: 'flowlb_table_epoch', type: 'gauge', help: 'Version of the bucket table; rises with every change of a bucket owner (twice per migration: held, then moved).', read: (s) => [{ value: s.epoch }] },
  // workers
  { name: 'flowlb_worker_up', type: 'gauge', help: '1 if the worker of this lane is running, ready and reporting, else 0.', read: perWorker((l) => (l.up ? 1 : 0)) },
  { name: 'flowlb_worker_restarts_total', type: 'counter', help: 'Times the lane\'s worker was replaced after it exited.', read: perWorker((l) => l.restarts) },
  { name: 'flowlb_worker_received_packets_total', type: 'counter', help: 'Packets the worker read from its channel.', read: perWorker((l) => l.rxPackets) },
  { name: 'flowlb_worker_received_bytes_total', type: 'counter', help: 'Payload bytes the worker read from its channel.', read: perWorker((l) => l.rxBytes) },
  { name: 'flowlb_handled_packets_total', type: 'counter', help: 'Packets the worker passed to the handler.', read: perWorker((l) => l.handled) },
  { name: 'flowlb_replied_packets_total', type: 'counter', help: 'Replies the handler sent to clients.', read: perWorker((l) => l.replies) },
  { name: 'flowlb_replied_bytes_total', type: 'counter', help: 'Payload bytes of replies to clients.', read: perWorker((l) => l.replyBytes) },
  { name: 'flowlb_reply_errors_total', type: 'counter', help: 'Replies that could not be sent (also counted in flowlb_replied_packets_total, which counts replies handed to the socket).', read: perWorker((l) => l.replyErrors) },
  { name: 'flowlb_handler_crashes_total', type: 'counter', help: 'Exceptions thrown by handler code outside onPacket (other hooks, timers, socket events, rejected promises), isolated by the worker.', read: perWorker((l) => l.handlerCrashes) },
  { name: 'flowlb_flows_active', type: 'gauge', help: 'Flows in the worker\'s flow table.', read: perWorker((l) => l.flowsActive) },
  { name: 'flowlb_flows_created_total', type: 'counter', help: 'Flows the worker started (migrated-in flows not counted).', read: perWorker((l) => l.flowsCreated) },
  {
    name: 'flowlb_worker_lost_packets_total', type: 'counter',
    help: 'Estimated packets lost with a worker that died: written to it and not reported handled, dropped or handed on (in its channel or queue); high by at most one report interval of its work. Not in flowlb_dropped_packets_total.',
    read: perWorker((l) => l.lostOnExit),
  },
  { name: 'flowlb_flows_expired_total', type: 'counter', help: 'Flows the worker ended (idle timeout, shutdown, eviction).', read: perWorker((l) => l.flowsExpired) },
  { name: 'flowlb_queue_depth_packets', type: 'gauge', help: 'Packets queued in the worker at its latest report.', read: perWorker((l) => l.queueDepth) },
  { name: 'flowlb_queue_peak_depth_packets', type: 'gauge', help: 'Deepest the worker\'s queue was during its latest report interval.', read: perWorker((l) => l.peakQueueDepth) },
  { name: 'flowlb_queue_active_flows', type: 'gauge', help: 'Flows with packets queued in the worker at its latest report.', read: perWorker((l) => l.activeQueues) },
  { name: 'flowlb_queue_limit_packets', type: 'gauge', help: 'Queue depth past which a worker counts as overloaded and loses buckets at once.', read: (s) => [{ value: s.queueLimit }] },
  { name: 'flowlb_cpu_utilization_ratio', type: 'gauge', help: 'Worker process CPU time over wall time (1 = one core), smoothed as the balancer sees it.', read: perWorker((l) => l.cpuUtil) },
  { name: 'flowlb_event_loop_utilization_ratio', type: 'gauge', help: 'Worker event-loop utilisation (0 to 1), smoothed as the balancer sees it.', read: perWorker((l) => l.elu) },
  { name: 'flowlb_worker_cpu_limit_cores', type: 'gauge', help: 'CPU quota of the worker\'s cgroup in cores (CFS bandwidth; 0 = none); its imbalance index never exceeds it.', read: perWorker((l) => l.cpuLimit) },
  { name: 'flowlb_worker_resident_memory_bytes', type: 'gauge', help: 'Resident set size of the worker process at its latest report.', read: perWorker((l) => l.rssBytes) },
  {
    name: 'flowlb_worker_cpu_seconds_total', type: 'counter', help: 'CPU time (user + system) of the lane\'s current worker process; resets when the worker restarts.',
    read: perWorkerKnown((l) => l.cpuSeconds),
  },
  {
    name: 'flowlb_worker_cpu_wait_seconds_total', type: 'counter',
    help: 'Time the worker\'s event-loop thread was runnable but waiting for a CPU (kernel schedstat run delay): contention from other processes on its core; resets when the worker restarts.',
    read: perWorkerKnown((l) => l.cpuWaitSeconds),
  },
  // balancer
  { name: 'flowlb_imbalance_index', type: 'gauge', help: 'The balancer\'s imbalance index of the worker: how much of a core it gets, in cores (0.05 to 1; 0 while down). Absolute: the target share is index over the sum.', read: perWorker((l) => l.imbalanceIndex) },
  { name: 'flowlb_target_share_ratio', type: 'gauge', help: 'Share of the load the balancer aims to give the worker (sums to 1).', read: perWorker((l) => l.targetShare) },
  { name: 'flowlb_buckets_owned', type: 'gauge', help: 'Hash buckets the worker owns (buckets being migrated count for nobody).', read: perWorker((l) => l.buckets) },
  { name: 'flowlb_imbalance_ratio', type: 'gauge', help: 'The worst worker\'s distance from its target share as a fraction of all load, at the last rebalance round (0 = perfect).', read: (s) => [{ value: s.imbalance }] },
  { name: 'flowlb_rebalance_rounds_total', type: 'counter', help: 'Rebalance rounds the balancer ran.', read: (s) => [{ value: s.rounds }] },
  { name: 'flowlb_index_steps_total', type: 'counter', help: 'Times a worker\'s imbalance index stepped at once (its CPU share fell or rose sharply: a CPU hog came or went).', read: (s) => [{ value: s.indexSteps }] },
  { name: 'flowlb_overload_spills_total', type: 'counter', help: 'Times an overloaded worker (queue past the limit) had buckets moved off at once.', read: (s) => [{ value: s.overloadSpills }] },
  { name: 'flowlb_spilled_packets_total', type: 'counter', help: 'Packet mode: packets the primary sent to another worker than their bucket\'s owner because the owner was overloaded.', read: (s) => [{ value: s.spilledPackets }] },
  { name: 'flowlb_shed_packets_total', type: 'counter', help: 'Packet mode: queued packets an overloaded worker handed back, re-sent to another worker.', read: (s) => [{ value: s.shedPackets }] },
  { name: 'flowlb_worker_spilling', type: 'gauge', help: 'Packet mode: 1 while the worker\'s new packets go to another worker because it is overloaded.', read: perWorker((l) => (l.spilling ? 1 : 0)) },
  { name: 'flowlb_bucket_moves_planned_total', type: 'counter', help: 'Bucket moves the balancer planned.', read: (s) => [{ value: s.movesPlanned }] },
  // migrations
  {
    name: 'flowlb_bucket_migrations_total', type: 'counter', help: 'Finished bucket migrations by outcome: done, timeout (hand-over never came) or aborted (a worker died).',
    read: (s) => [
      { value: s.migrations.done, labels: { outcome: 'done' } },
      { value: s.migrations.timeout, labels: { outcome: 'timeout' } },
      { value: s.migrations.aborted, labels: { outcome: 'aborted' } },
    ],
  },
  {
    name: 'flowlb_migration_timeout_extensions_total', type: 'counter',
    help: 'Migration timeouts that fired while the awaited worker showed progress (reports with packets handled), so the migration waited longer.',
    read: (s) => [{ value: s.migrations.extended }],
  },
  {
    name: 'flowlb_migration_late_releases_total', type: 'counter',
    help: 'Hand-overs that came after their migration had ended (timed out); their packets count as migration_late drops.',
    read: (s) => [{ value: s.migrations.lateReleases }],
  },
  {
    name: 'flowlb_migration_late_flows_total', type: 'counter',
    help: 'Exported flow states that arrived after their migration had ended: imported by the current owner, or lost (it had newer state, or the bucket was moving again).',
    read: (s) => [
      { value: s.migrations.lateFlowsImported, labels: { outcome: 'imported' } },
      { value: s.migrations.lateFlowsLost, labels: { outcome: 'lost' } },
    ],
  },
  { name: 'flowlb_bucket_migrations_in_progress', type: 'gauge', help: 'Bucket migrations under way.', read: (s) => [{ value: s.migrations.inFlight }] },
  {
    name: 'flowlb_migration_duration_seconds', type: 'histogram', help: 'Time from holding a bucket to delivering its held packets to the new owner, per finished migration.',
    read: (s) => histogramSamples('flowlb_migration_duration_seconds', MIGRATION_BUCKETS_S, s.migrations.durationCounts, s.migrations.durationSumS),
  },
  {
    name: 'flowlb_dispatch_latency_seconds', type: 'histogram', help: 'Time from the primary handing a packet to a worker to the handler being called with it (queueing in the worker included); one packet timed at a time per worker, weighted by the packets that came while it waited.',
    read: (s) => histogramSamples('flowlb_dispatch_latency_seconds', LATENCY_BOUNDS_S, s.latencyCounts, s.latencySumMs / 1000),
  },
  // proxy backends
  { name: 'flowlb_backend_requests_total', type: 'counter', help: 'Datagrams the proxy sent to the backend.', read: perBackend((b) => b.counters.requests) },
  { name: 'flowlb_backend_responses_total', type: 'counter', help: 'Datagrams the backend sent back (relayed to clients).', read: perBackend((b) => b.counters.responses) },
  {
    name: 'flowlb_backend_errors_total', type: 'counter', help: 'Errors towards the backend by kind: refused (ICMP port unreachable), send, socket (receive), connect, local (flowlb out of descriptors, buffers or memory), timeout (no answer for handlerOptions.responseTimeout), probe (a health-check probe unanswered or refused).',
    read: (s) => [...s.backends].flatMap(([backend, b]) => BACKEND_ERROR_KINDS.map(([key, kind]) => ({ value: b.counters[key], labels: { backend, kind } }))),
  },
  {
    name: 'flowlb_backend_probes_total', type: 'counter', help: 'Active health-check probes (handlerOptions.healthCheck) by result: ok (answered as expected) or failed, summed over workers.',
    read: (s) => [...s.backends].flatMap(([backend, b]) => [
      { value: b.counters.probe_ok, labels: { backend, result: 'ok' } }, { value: b.counters.probe_failed, labels: { backend, result: 'failed' } },
    ]),
  },
  {
    name: 'flowlb_backend_up', type: 'gauge', help: '0 if a worker has the backend out of its table (passive health), or if within the last 5-10 s it refused datagrams, its connect failed or it was silent for responseTimeout, and it sent no response (probes count as traffic); else 1.',
    read: perBackend((b) => (b.up ? 1 : 0)),
  },
  {
    name: 'flowlb_backend_marked_down_total', type: 'counter', help: 'Times a worker took the backend out of its table (handlerOptions.maxFails failures within failTimeout), summed over workers.',
    read: perBackend((b) => b.counters.marked_down),
  },
  {
    name: 'flowlb_backend_down_workers', type: 'gauge', help: 'Workers that have the backend out of their table now (passive health; back in after handlerOptions.failTimeout).',
    read: perBackend((b) => b.downWorkers),
  },
  {
    name: 'flowlb_proxy_dropped_packets_total', type: 'counter', help: 'Datagrams the proxy handler could not forward, by reason: no_backend, connect_failed, preconnect_queue_full, migrating.',
    read: (s) => [...s.proxyDrops].map(([reason, value]) => ({ value, labels: { reason } })),
  },
  {
    name: 'flowlb_proxy_upstream_sockets', type: 'gauge', help: 'Upstream sockets the proxy handler has open (one per flow with a backend).',
    read: (s) => (s.proxyActiveUpstreams === null ? [] : [{ value: s.proxyActiveUpstreams }]),
  },
];

/** The registry's view of a metric: prom-client's Registry only calls `get()` (and `reset()` from resetMetrics). */
class SnapshotMetric {
  constructor(private readonly def: MetricDef, private readonly current: () => ClusterSnapshot) {}
  get name(): string { return this.def.name; }
  get type(): MetricType { return this.def.type; }
  get help(): string { return this.def.help; }
  get(): { name: string; help: string; type: MetricType; values: Sample[]; aggregator: 'sum' } {
    return { name: this.def.name, help: this.def.help, type: this.def.type, values: this.def.read(this.current()), aggregator: 'sum' };
  }
  reset(): void {}
}

/** Default process metrics of the primary: `flowlb_primary_process_cpu_seconds_total`, `flowlb_primary_nodejs_*`... */
export const PRIMARY_PROCESS_PREFIX = 'flowlb_primary_';

export function createMetrics(v: ServiceView): Metrics {
  const registry = new client.Registry();
  // "primary" in the prefix: every other flowlb_ metric describes the cluster, these only the primary process.
  client.collectDefaultMetrics({ register: registry, prefix: PRIMARY_PROCESS_PREFIX });
  // prom-client names three gauges `nodejs_active_{handles,requests,resources}_total`; `_total` marks counters
  // (promtool check metrics rejects them), and each is the sum of the per-type gauge of the same name without it.
  for (const m of registry.getMetricsAsArray()) {
    if (m.name.endsWith('_total') && String((m as unknown as { type?: unknown }).type) !== 'counter') registry.removeSingleMetric(m.name);
  }
  const ledger = new HandlerCounterLedger();
  const health = new BackendHealth();
  let snapshot: ClusterSnapshot | null = null;
  const current = (): ClusterSnapshot => (snapshot ??= takeSnapshot(v, ledger, health));
  for (const def of METRIC_DEFS) registry.registerMetric(new SnapshotMetric(def, current) as unknown as client.Metric);
  return {
    contentType: registry.contentType,
    render: async () => {
      // Registry.metrics() calls every metric's get() synchronously before its first await, so all of them
      // read this one snapshot; it is dropped before the next scrape.
      snapshot = takeSnapshot(v, ledger, health);
      const text = registry.metrics();
      snapshot = null;
      return text;
    },
  };
}
