/**
 * The status HTTP listener (loopback by default): /healthz, /status (JSON) and /metrics (Prometheus).
 */
import http from 'node:http';
import { formatEndpoint, parseEndpoint, type Endpoint, type FlowlbConfig } from '../config.js';
import type { Dispatcher } from '../datapath/dispatcher.js';
import { DROP_MIGRATION_LATE, DROP_REASONS } from '../datapath/counters.js';
import { BindError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Balancer } from '../control/balancer.js';
import type { Migrator } from '../control/migrator.js';
import { stalledAfterMs, type WorkerSet } from '../control/worker-set.js';
import { createMetrics, laneDropTotals } from './registry.js';
import { socketDrops } from './socket-drops.js';
import { where } from '../control/where.js';
import { loadHasher } from '../datapath/tuple.js';

export interface ServiceView {
  readonly config: FlowlbConfig;
  readonly dispatcher: Dispatcher;
  readonly workers: WorkerSet;
  readonly balancer: Balancer;
  readonly migrator: Migrator;
  readonly udp: readonly Endpoint[];
  readonly log: Logger;
  /** SIGHUP reloads applied and rejected. */
  readonly reloads?: { readonly ok: number; readonly rejected: number; readonly lastOk?: boolean; readonly restartNeeded?: readonly string[] };
  /** Workers the stall watchdog killed (no load report for stallTimeout). */
  readonly stallKills?: number;
}

export interface HttpServer {
  readonly endpoint: Endpoint;
  close(): Promise<void>;
}

/** The worker owning `bucket`, or null while it is migrating or unassigned. */
function ownerOf(v: ServiceView, bucket: number): number | null {
  const o = v.dispatcher.table.owner[bucket]!;
  return o < v.config.workers ? o : null;
}

/** Ready when every worker is up and owns its share: no bucket unassigned, none held by a dead lane. */
export function isHealthy(v: ServiceView): boolean {
  if (!v.workers.allReady()) return false;
  // A worker stuck in its handler stays "ready" but stops reporting (and serving its flows).
  const stalled = stalledAfterMs(v.config.balancer.reportIntervalMs);
  for (let lane = 0; lane < v.config.workers; lane++) if (!v.workers.isUp(lane, stalled)) return false;
  const owner = v.dispatcher.table.owner;
  for (let b = 0; b < owner.length; b++) {
    const o = owner[b]!;
    if (o < v.config.workers && !v.workers.isReady(o)) return false;
    if (o === 0xffff) return false;
  }
  return true;
}

export function buildStatus(v: ServiceView): unknown {
  const counts = v.dispatcher.table.countsBy(v.config.workers);
  const d = v.dispatcher;
  const workers = [];
  for (let lane = 0; lane < v.config.workers; lane++) {
    const r = v.workers.lastReport(lane);
    const c = r?.counters;
    workers.push({
      id: lane,
      // null while the lane has no process (between a crash and its replacement, or given up after crashing).
      pid: v.workers.worker(lane) !== null ? v.workers.pid(lane) : null,
      ready: v.workers.isReady(lane),
      // Ready but no report for stalledAfterMs: stuck (e.g. an endless loop in the handler); counts as down.
      stalled: v.workers.isReady(lane) && !v.workers.isUp(lane, stalledAfterMs(v.config.balancer.reportIntervalMs)),
      // null before its first report or readiness (a replacement starting): no age to give.
      reportAgeMs: Number.isFinite(v.workers.reportAgeMs(lane)) ? Math.round(v.workers.reportAgeMs(lane)) : null,
      restarts: v.workers.restarts(lane),
      // Estimated packets lost with this lane's processes that died (flowlb_worker_lost_packets_total).
      lostOnExit: v.workers.lostOnExit(lane),
      cpuUtil: v.balancer.model.cpuUtil[lane],
      elu: v.balancer.model.elu[lane],
      // The last report's figures, unsmoothed (the two above are the balancer's EWMAs).
      cpuLast: r?.cpuUtil ?? 0,
      eluLast: r?.elu ?? 0,
      // The worker's cgroup CPU quota in cores (0: none); its index never goes above it.
      cpuLimit: v.balancer.model.cpuLimit[lane],
      index: v.balancer.indexes[lane],
      // The worker's usual distance between a report's own cpu/elu and its index: a report counts towards a step
      // only if it is more than 3x this away (see Balancing in the README).
      stepNoise: v.balancer.reportNoise[lane],
      // The event-loop thread in the last report: time on a CPU and time runnable but waiting for one, over wall
      // time (-1: the kernel does not say); and the balancer's recent run / (run + wait) (-1: none yet).
      schedRunLast: r?.schedRun ?? -1,
      schedWaitLast: r?.schedWait ?? -1,
      schedShare: v.balancer.schedShare[lane],
      targetShare: v.balancer.shares[lane],
      buckets: counts[lane],
      queueDepth: r?.queueDepth ?? 0,
      // The decayed rate falls towards 0 without reaching it (6.7e-93 on an idle service): rounded to 0.01 pps.
      pps: Math.round((v.balancer.model.packetsPerSec[lane] ?? 0) * 100) / 100,
      dispatchedPackets: d.lanePackets[lane],
      batches: d.laneBatches[lane],
      flowsActive: c?.flowsActive ?? 0,
      handled: c?.handled ?? 0,
      replies: c?.replies ?? 0,
      // Replies the worker could not send (no front socket, or the send failed): lost after flowlb handled them.
      replyErrors: c?.replyErrors ?? 0,
      // The worker's own drops plus migration_late, counted for it by the primary (packets it handed over too late).
      drops: Object.fromEntries(DROP_REASONS.map((n, i) => [n, (c?.drops[i] ?? 0) + (i === DROP_MIGRATION_LATE ? v.migrator.lateDropped[lane]! : 0)])
        .filter(([, x]) => x !== 0)),
      rssBytes: r?.memRss ?? 0,
    });
  }
  return {
    healthy: isHealthy(v),
    pid: process.pid,
    udp: v.udp,
    handler: v.config.handler,
    mode: v.config.balancer.mode,
    balancer: v.config.balancer.enabled ? 'adaptive' : 'static',
    buckets: v.config.buckets,
    epoch: v.dispatcher.table.epoch,
    imbalance: v.balancer.lastImbalance,
    reloads: v.reloads ?? { ok: 0, rejected: 0 },
    backends: v.config.backends.map((b) => ({ host: b.host, port: b.port, weight: b.weight })),
    rounds: v.balancer.rounds,
    idleRounds: v.balancer.idleRounds,
    indexSteps: v.balancer.indexSteps,
    indexStepsBySched: v.balancer.indexStepsBySched,
    stallKills: v.stallKills ?? 0,
    overloadSpills: v.balancer.overloadSpills,
    spilledPackets: v.dispatcher.spilledPackets,
    shedPackets: v.balancer.shedPackets,
    received: d.rxPackets,
    held: d.heldTotal(),
    dropped: Object.fromEntries(DROP_REASONS.map((n, i) => [n, d.drops[i]!]).filter(([, x]) => x !== 0)),
    // The whole cluster's drops by reason, over every worker process that ever served (flowlb_dropped_packets_total):
    // `dropped` above is the primary's only, and a worker's `drops` its current process's.
    droppedTotal: droppedTotal(v),
    // Per front listener: datagrams the kernel dropped before the primary read them (null: unknown here).
    kernelDrops: socketDrops(v.udp),
    migrations: {
      completed: v.migrator.completed, timeouts: v.migrator.timeouts, aborted: v.migrator.aborted,
      inFlight: v.migrator.inFlight, extended: v.migrator.extended, lateReleases: v.migrator.lateReleases,
      lateFlows: { imported: v.migrator.lateFlowsImported, lost: v.migrator.lateFlowsLost },
      recent: v.migrator.recent.slice(-10),
    },
    workers,
  };
}

/** The listener that receives datagrams sent to `dst` (its own address, or a wildcard of its family on its port). */
function listenerFor(listeners: readonly Endpoint[], dst: string): Endpoint {
  // One spelling (IPv6 canonical, localhost as 127.0.0.1), as the listeners' own addresses are.
  const d = parseEndpoint(dst, 'dst');
  const wildcard = d.family === 6 ? '::' : '0.0.0.0';
  const same = (l: Endpoint): boolean => l.family === d.family && l.port === d.port;
  const l = listeners.find((x) => same(x) && x.host === d.host) ?? listeners.find((x) => same(x) && x.host === wildcard);
  if (l === undefined) throw new Error(`dst ${dst} is not an address flowlb listens on (${listeners.map(formatEndpoint).join(', ')})`);
  return l;
}

export async function startHttp(ep: Endpoint, v: ServiceView): Promise<HttpServer> {
  const metrics = createMetrics(v);
  const whereHasher = await loadHasher();
  const server = http.createServer((req, res) => {
    const [url, query] = (req.url ?? '/').split('?') as [string, string | undefined];
    if (req.method === 'POST' && url === '/admin/move') {
      // Operator action (and the migration benchmarks): move one bucket to a worker now, with its flows' state.
      const q = new URLSearchParams(query ?? '');
      // Number(null) and Number('') are 0: a missing parameter must not mean "bucket 0" or "worker 0".
      // Decimal digits only: Number() would also take 0x10, 1e2 or " 7 ".
      const param = (name: string): number => { const t = q.get(name); return t === null || !/^\d{1,9}$/.test(t) ? NaN : Number(t); };
      const bucket = param('bucket'), to = param('to');
      if (!Number.isInteger(bucket) || bucket < 0 || bucket >= v.config.buckets || !Number.isInteger(to) || to < 0 || to >= v.config.workers) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(`bucket must be 0..${v.config.buckets - 1} and to 0..${v.config.workers - 1}\n`);
        return;
      }
      const started = v.migrator.start(bucket, to);
      res.writeHead(started ? 202 : 409, { 'content-type': 'application/json' })
        // owner: the worker that owns the bucket now, or null while it is in flight (the table then holds a hold
        // lane, which is no worker); migrating says which.
        .end(JSON.stringify({ started, bucket, to, owner: ownerOf(v, bucket), migrating: v.migrator.isMigrating(bucket) }));
      return;
    }
    if (url === '/admin/move') { res.writeHead(405, { allow: 'POST', 'content-type': 'text/plain' }).end('use POST /admin/move?bucket=B&to=W\n'); return; }
    if (req.method !== 'GET' && req.method !== 'HEAD') { res.writeHead(405, { allow: 'GET, HEAD' }).end(); return; }
    if (url === '/healthz') {
      const ok = isHealthy(v);
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'not ready\n');
    } else if (url === '/where') {
      // "Where would this flow go": src=IP:PORT [dst=IP:PORT, default the first listener of src's family: an IPv4
      // client cannot have sent to an IPv6 listener, which are IPv6-only].
      const q = new URLSearchParams(query ?? '');
      const srcFamily = (q.get('src') ?? '').startsWith('[') ? 6 : 4;
      try {
        const l = q.get('dst') === null ? (v.udp.find((u) => u.family === srcFamily) ?? v.udp[0]!) : listenerFor(v.udp, q.get('dst')!);
        // The hash covers the listener's own address (a wildcard listener's is the wildcard), as the dispatcher's.
        const dst = formatEndpoint(l);
        const answer = where(whereHasher!, q.get('src') ?? '', dst, v.config.buckets,
          v.config.handler === 'proxy' ? v.config.backends : [], v.dispatcher.table.owner);
        const w = answer.worker;
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({
          ...answer, workerMax: v.config.workers - 1, worker: w !== null && w < v.config.workers ? w : null,
          migrating: w !== null && w >= v.config.workers,
        }));
      } catch (err) {
        res.writeHead(400, { 'content-type': 'text/plain' }).end(`${err instanceof Error ? err.message : String(err)}\n`);
      }
    } else if (url === '/status') {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(buildStatus(v)));
    } else if (url === '/metrics') {
      metrics.render().then(
        (text) => res.writeHead(200, { 'content-type': metrics.contentType }).end(text),
        (err: unknown) => { v.log.warn('metrics failed', { err }); res.writeHead(500).end(); },
      );
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /status, /metrics, /healthz, /where?src=IP:PORT, POST /admin/move?bucket=B&to=W\n');
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const where = formatEndpoint(ep);
      reject(new BindError(err.code === 'EADDRINUSE' ? `http address ${where} is already in use` : `http address ${where} could not be bound: ${err.message}`));
    });
    server.listen(ep.port, ep.host, () => resolve());
  });
  const a = server.address();
  const endpoint: Endpoint = typeof a === 'object' && a ? { host: a.address, port: a.port, family: ep.family } : ep;
  return {
    endpoint,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

function droppedTotal(v: ServiceView): Record<string, number> {
  const total = Array.from(v.dispatcher.drops);
  for (let lane = 0; lane < v.config.workers; lane++) {
    const laneDrops = laneDropTotals(v.workers, v.migrator.lateDropped, lane);
    for (let i = 0; i < total.length; i++) total[i] = total[i]! + (laneDrops[i] ?? 0);
  }
  return Object.fromEntries(DROP_REASONS.map((n, i) => [n, total[i]!]).filter(([, x]) => x !== 0));
}
