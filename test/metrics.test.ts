/**
 * /metrics: the exposition is valid text format, every metric is documented, drops/histograms/backend counters
 * are computed right from the primary's objects (unit, real Dispatcher/WorkerSet/Balancer/Migrator without
 * processes), and against a real running cluster: the conservation identity holds in every scrape and every
 * worker's counters rise with real UDP traffic. Needs `npx tsc -p .` first (the service runs from dist/).
 */
import dgram from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';

import { MIGRATION_BUCKETS_S } from '../src/control/migrator.js';
import { LATENCY_BOUNDS_MS } from '../src/control/protocol.js';
import type { WorkerReportMsg } from '../src/control/worker-set.js';
import { DROP_HANDLER_ERROR, DROP_QUEUE_FULL, DROP_REASON_COUNT, DROP_REASONS } from '../src/datapath/counters.js';
import { createMetrics, HEALTH_WINDOW_MS, METRIC_DEFS } from '../src/metrics/registry.js';
import { CLI, LOOPBACK, ROOT, startFlowlb, waitFor } from './support/service.js';
import { counters, fakeWorker, report, sink, unitService } from './support/control.js';

const DOCS = path.join(ROOT, 'docs/metrics.md');

// A test that moves the clock by hand must not leave it moved for the next one, even when it fails.
afterEach(() => { vi.useRealTimers(); });

// ---- the text exposition format, strictly ----

interface Sample { name: string; labels: Record<string, string>; value: number }
interface Exposition { types: Map<string, string>; samples: Sample[] }

const NAME = '[a-zA-Z_:][a-zA-Z0-9_:]*';
const LABEL = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
const VALUE = '[-+]?(?:\\d+(?:\\.\\d*)?|\\.\\d+)(?:[eE][-+]?\\d+)?|[-+]?Inf|NaN|Nan';
const SAMPLE_RE = new RegExp(`^(${NAME})(?:\\{((?:${LABEL})(?:,${LABEL})*)?\\})? (${VALUE})(?: -?\\d+)?$`);
const HELP_RE = new RegExp(`^# HELP (${NAME}) .*$`);
const TYPE_RE = new RegExp(`^# TYPE (${NAME}) (counter|gauge|histogram|summary|untyped)$`);

/** Parses Prometheus text format 0.0.4; throws naming the first line that is not valid. */
function parseExposition(text: string): Exposition {
  const types = new Map<string, string>();
  const samples: Sample[] = [];
  const seen = new Set<string>();
  text.split('\n').forEach((line, i) => {
    if (line === '') return;
    let m: RegExpExecArray | null;
    if ((m = HELP_RE.exec(line))) return;
    if ((m = TYPE_RE.exec(line))) {
      if (types.has(m[1]!)) throw new Error(`line ${i + 1}: second TYPE for ${m[1]}`);
      types.set(m[1]!, m[2]!);
      return;
    }
    m = SAMPLE_RE.exec(line);
    if (!m) throw new Error(`line ${i + 1} is not valid exposition: ${JSON.stringify(line)}`);
    const labels: Record<string, string> = {};
    for (const lm of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]!] = lm[2]!;
    const name = m[1]!;
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    if (!types.has(family)) throw new Error(`line ${i + 1}: sample ${name} has no TYPE`);
    if (family !== name && types.get(family) !== 'histogram' && types.get(family) !== 'summary') throw new Error(`line ${i + 1}: ${name} is not a histogram sample`);
    const key = `${name}${JSON.stringify(Object.entries(labels).sort())}`;
    if (seen.has(key)) throw new Error(`line ${i + 1}: duplicate series ${key}`);
    seen.add(key);
    const v = m[3]!;
    samples.push({ name, labels, value: v.endsWith('Inf') ? (v.startsWith('-') ? -Infinity : Infinity) : Number(v) });
  });
  for (const [name, type] of types) {
    if (type === 'counter' && !name.endsWith('_total')) throw new Error(`counter ${name} does not end in _total`);
    if (type !== 'counter' && name.endsWith('_total')) throw new Error(`${type} ${name} ends in _total`);
  }
  return { types, samples };
}

function value(e: Exposition, name: string, labels: Record<string, string> = {}): number {
  const hit = e.samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  if (hit.length !== 1) throw new Error(`${name}${JSON.stringify(labels)}: ${hit.length} samples`);
  return hit[0]!.value;
}

function total(e: Exposition, name: string): number {
  return e.samples.filter((s) => s.name === name).reduce((a, s) => a + s.value, 0);
}

function byWorker(e: Exposition, name: string): Map<string, number> {
  return new Map(e.samples.filter((s) => s.name === name).map((s) => [s.labels.worker!, s.value]));
}

/** The identity in docs/metrics.md: every datagram read is dispatched, dropped by the primary or held. */
function conservationGap(e: Exposition): number {
  return value(e, 'flowlb_received_packets_total')
    - total(e, 'flowlb_dispatched_packets_total') - total(e, 'flowlb_primary_dropped_packets_total') - value(e, 'flowlb_held_packets');
}

function histogram(e: Exposition, name: string): { le: string[]; cumulative: number[]; sum: number; count: number } {
  const buckets = e.samples.filter((s) => s.name === `${name}_bucket`);
  return {
    le: buckets.map((b) => b.labels.le!), cumulative: buckets.map((b) => b.value),
    sum: value(e, `${name}_sum`), count: value(e, `${name}_count`),
  };
}

// ---- unit: real control-plane objects, no processes (test/support/control.ts) ----

describe('metrics from the primary\'s objects', () => {
  it('keeps received = dispatched + primary drops + held, with every drop reason present', async () => {
    const { view, dispatcher } = await unitService();
    dispatcher.setSink(0, sink); // lane 1 has no channel: its packets are dropped as worker_down
    const payload = Buffer.from('hello');
    for (let port = 10_000; port < 10_200; port++) dispatcher.dispatch(0, payload, '127.0.0.1', 'IPv4', port);
    dispatcher.dispatch(0, Buffer.alloc(2000), '127.0.0.1', 'IPv4', 9999); // oversize
    dispatcher.dispatch(0, payload, 'not an address', 'IPv4', 9999); // malformed
    // Hold the bucket of one flow, then send to it: the packet waits in the primary.
    dispatcher.setSink(1, sink);
    const before = Float64Array.from(dispatcher.bucketPackets);
    dispatcher.dispatch(0, payload, '127.0.0.1', 'IPv4', 20_000);
    const bucket = dispatcher.bucketPackets.findIndex((x, b) => x !== before[b]);
    const hold = dispatcher.allocHold();
    dispatcher.beginHold(bucket, hold, 1);
    dispatcher.dispatch(0, payload, '127.0.0.1', 'IPv4', 20_000);
    dispatcher.dispatch(0, payload, '127.0.0.1', 'IPv4', 20_000);

    const e = parseExposition(await createMetrics(view).render());
    expect(value(e, 'flowlb_received_packets_total')).toBe(205);
    expect(value(e, 'flowlb_held_packets')).toBe(2);
    expect(value(e, 'flowlb_primary_dropped_packets_total', { reason: 'oversize' })).toBe(1);
    expect(value(e, 'flowlb_primary_dropped_packets_total', { reason: 'malformed' })).toBe(1);
    expect(value(e, 'flowlb_dropped_packets_total', { reason: 'worker_down' })).toBeGreaterThan(0);
    expect(conservationGap(e)).toBe(0);
    for (const reason of DROP_REASONS) {
      expect(value(e, 'flowlb_dropped_packets_total', { reason })).toBeGreaterThanOrEqual(0);
      expect(value(e, 'flowlb_primary_dropped_packets_total', { reason })).toBeGreaterThanOrEqual(0);
    }
    expect(e.samples.filter((s) => s.name === 'flowlb_dropped_packets_total')).toHaveLength(DROP_REASONS.length);
  });

  it('adds worker drops and counters of dead processes to the live ones, so totals never go back', async () => {
    const { view, workers, dispatcher } = await unitService();
    const drops = new Array(DROP_REASON_COUNT).fill(0);
    drops[DROP_QUEUE_FULL] = 3;
    workers.attach(0, fakeWorker(1001));
    workers.markReady(0, 1001);
    workers.ingestReport(0, report(counters({ handled: 100, rxPackets: 110, drops })));
    workers.attach(1, fakeWorker(1002));
    workers.markReady(1, 1002);
    workers.ingestReport(1, report(counters({ handled: 40, rxPackets: 40 })));
    dispatcher.drops[DROP_HANDLER_ERROR] = 0;
    const metrics = createMetrics(view);
    let e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_handled_packets_total', { worker: '0' })).toBe(100);
    expect(value(e, 'flowlb_dropped_packets_total', { reason: 'queue_full' })).toBe(3);
    expect(value(e, 'flowlb_worker_up', { worker: '0' })).toBe(1);
    expect(value(e, 'flowlb_queue_depth_packets', { worker: '1' })).toBe(7);

    // Lane 0's process dies; its last report becomes retired, then a new process reports small numbers.
    workers.detach(0);
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_worker_up', { worker: '0' })).toBe(0);
    expect(value(e, 'flowlb_handled_packets_total', { worker: '0' })).toBe(100);
    expect(value(e, 'flowlb_queue_depth_packets', { worker: '0' })).toBe(0);
    workers.attach(0, fakeWorker(2001));
    workers.markReady(0, 2001);
    const drops2 = new Array(DROP_REASON_COUNT).fill(0);
    drops2[DROP_QUEUE_FULL] = 1;
    workers.ingestReport(0, report(counters({ handled: 5, rxPackets: 5, drops: drops2 })));
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_handled_packets_total', { worker: '0' })).toBe(105);
    expect(value(e, 'flowlb_worker_received_packets_total', { worker: '0' })).toBe(115);
    expect(value(e, 'flowlb_dropped_packets_total', { reason: 'queue_full' })).toBe(4);
    expect(value(e, 'flowlb_worker_restarts_total', { worker: '0' })).toBe(1);
    // Primary-only drops stay apart: the workers' queue_full is not a primary drop.
    expect(value(e, 'flowlb_primary_dropped_packets_total', { reason: 'queue_full' })).toBe(0);
  });

  it('writes histograms as cumulative buckets in seconds, ending in +Inf = count', async () => {
    const { view, workers, migrator } = await unitService();
    const latencyCounts = new Array(LATENCY_BOUNDS_MS.length + 1).fill(0);
    latencyCounts[0] = 2; // <= 0.05 ms
    latencyCounts[4] = 3; // <= 1 ms
    latencyCounts[LATENCY_BOUNDS_MS.length] = 1; // > 1000 ms
    workers.attach(0, fakeWorker(1));
    workers.ingestReport(0, report(counters({ latencyCounts, latencySumMs: 1500 })));
    workers.attach(1, fakeWorker(2));
    workers.ingestReport(1, report(counters({ latencyCounts: latencyCounts.map((x) => x * 10), latencySumMs: 500 })));
    migrator.durationCounts[2] = 4;
    migrator.durationSumS = 0.012;
    migrator.completed = 4;

    const e = parseExposition(await createMetrics(view).render());
    const lat = histogram(e, 'flowlb_dispatch_latency_seconds');
    expect(lat.le).toEqual([...LATENCY_BOUNDS_MS.map((ms) => String(Number((ms / 1000).toPrecision(12)))), '+Inf']);
    expect(lat.le[0]).toBe('0.00005');
    expect(lat.cumulative[0]).toBe(22);
    expect(lat.cumulative[4]).toBe(55);
    expect(lat.cumulative.at(-2)).toBe(55);
    expect(lat.cumulative.at(-1)).toBe(66);
    expect(lat.count).toBe(66);
    expect(lat.sum).toBeCloseTo(2, 9);
    for (let i = 1; i < lat.cumulative.length; i++) expect(lat.cumulative[i]).toBeGreaterThanOrEqual(lat.cumulative[i - 1]!);

    const mig = histogram(e, 'flowlb_migration_duration_seconds');
    expect(mig.le).toEqual([...MIGRATION_BUCKETS_S.map(String), '+Inf']);
    expect(mig.cumulative.slice(0, 3)).toEqual([0, 0, 4]);
    expect(mig.count).toBe(4);
    expect(mig.sum).toBeCloseTo(0.012, 9);
    expect(value(e, 'flowlb_bucket_migrations_total', { outcome: 'done' })).toBe(4);
  });

  it('sums backend counters over workers, keeps them across restarts and judges backend_up from traffic', async () => {
    // backend_up looks for failures over the last 5-10 s (HEALTH_WINDOW_MS): the clock is moved by hand.
    vi.useFakeTimers({ toFake: ['performance'] });
    const later = (): void => { vi.advanceTimersByTime(HEALTH_WINDOW_MS + 1); };
    const { view, workers } = await unitService({ handler: 'proxy', backends: [{ host: '10.0.0.1', port: 53, family: 4, weight: 1 }, { host: '::1', port: 99, family: 6, weight: 1 }] });
    const metrics = createMetrics(view);
    let e = parseExposition(await metrics.render());
    // Configured backends have series before any traffic.
    expect(value(e, 'flowlb_backend_requests_total', { backend: '10.0.0.1:53' })).toBe(0);
    expect(value(e, 'flowlb_backend_up', { backend: '10.0.0.1:53' })).toBe(1);

    workers.attach(0, fakeWorker(11));
    workers.ingestReport(0, report(counters(), {
      handlerCounters: {
        'requests@10.0.0.1:53': 10, 'responses@10.0.0.1:53': 9, 'requests@[::1]:99': 4, 'refused@[::1]:99': 4, dropped_no_backend: 2, active_upstreams: 3,
        'marked_down@[::1]:99': 1, 'down@[::1]:99': 1,
      },
    }));
    workers.attach(1, fakeWorker(12));
    workers.ingestReport(1, report(counters(), { handlerCounters: { 'requests@10.0.0.1:53': 5, 'responses@10.0.0.1:53': 5, active_upstreams: 1 } }));
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_requests_total', { backend: '10.0.0.1:53' })).toBe(15);
    expect(value(e, 'flowlb_backend_responses_total', { backend: '10.0.0.1:53' })).toBe(14);
    expect(value(e, 'flowlb_backend_errors_total', { backend: '[::1]:99', kind: 'refused' })).toBe(4);
    expect(value(e, 'flowlb_backend_up', { backend: '10.0.0.1:53' })).toBe(1);
    expect(value(e, 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(0);
    expect(value(e, 'flowlb_proxy_dropped_packets_total', { reason: 'no_backend' })).toBe(2);
    expect(value(e, 'flowlb_proxy_upstream_sockets')).toBe(4);
    expect(value(e, 'flowlb_backend_marked_down_total', { backend: '[::1]:99' })).toBe(1);
    expect(value(e, 'flowlb_backend_down_workers', { backend: '[::1]:99' })).toBe(1);
    expect(value(e, 'flowlb_backend_down_workers', { backend: '10.0.0.1:53' })).toBe(0);

    // Worker 0 is replaced: its handler counters restart at 0 but the totals keep what it had counted.
    workers.detach(0);
    workers.attach(0, fakeWorker(21));
    workers.ingestReport(0, report(counters(), { handlerCounters: { 'requests@10.0.0.1:53': 1, 'responses@[::1]:99': 1, active_upstreams: 1 } }));
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_requests_total', { backend: '10.0.0.1:53' })).toBe(16);
    expect(value(e, 'flowlb_backend_requests_total', { backend: '[::1]:99' })).toBe(4);
    expect(value(e, 'flowlb_proxy_upstream_sockets')).toBe(2);
    // The refusing backend answered: up again. The dead process's "down" was a level, not a count: not kept.
    expect(value(e, 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(1);
    expect(value(e, 'flowlb_backend_down_workers', { backend: '[::1]:99' })).toBe(0);
    expect(value(e, 'flowlb_backend_marked_down_total', { backend: '[::1]:99' })).toBe(1);

    // A worker that has a backend out of its table makes it down, even while it answers others.
    later();
    workers.ingestReport(1, report(counters(), { handlerCounters: { 'requests@10.0.0.1:53': 9, 'responses@10.0.0.1:53': 9, 'down@10.0.0.1:53': 1 } }));
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_up', { backend: '10.0.0.1:53' })).toBe(0);
    expect(value(e, 'flowlb_backend_down_workers', { backend: '10.0.0.1:53' })).toBe(1);

    // No new failure and no worker holding it out: up again, with or without responses (it stayed 0 for ever
    // after one burst of refusals: a backend out of every table gets no traffic to answer).
    workers.ingestReport(0, report(counters(), { handlerCounters: { 'refused@[::1]:99': 7 } }));
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(0);
    // Every reader sees the same: a second scrape at once does not take the 0 away (it did: "since the previous
    // scrape", two scrapes 17 ms apart read 0 then 1).
    expect(value(parseExposition(await metrics.render()), 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(0);
    workers.ingestReport(1, report(counters(), { handlerCounters: { 'requests@10.0.0.1:53': 9, 'responses@10.0.0.1:53': 9 } }));
    // Still 0 within the window of the failures; up once a window has passed without new ones.
    later();
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(0);
    later();
    e = parseExposition(await metrics.render());
    expect(value(e, 'flowlb_backend_up', { backend: '[::1]:99' })).toBe(1);
    expect(value(e, 'flowlb_backend_up', { backend: '10.0.0.1:53' })).toBe(1);
    vi.useRealTimers();
  });

  it('documents every metric it emits, with a valid exposition', async () => {
    const { view } = await unitService();
    const text = await createMetrics(view).render();
    const e = parseExposition(text);
    const docs = readFileSync(DOCS, 'utf8');
    const undocumented = METRIC_DEFS.map((d) => d.name).filter((name) => !docs.includes(`\`${name}\``));
    expect(undocumented).toEqual([]);
    for (const d of METRIC_DEFS) {
      if (d.name !== 'flowlb_worker_cpu_seconds_total' && d.name !== 'flowlb_worker_cpu_wait_seconds_total' && d.name !== 'flowlb_socket_receive_drops_total' && !d.name.startsWith('flowlb_backend_') && !d.name.startsWith('flowlb_proxy_')) {
        expect(e.types.get(d.name), d.name).toBe(d.type);
      }
    }
    // The primary's own process metrics, without prom-client's `_total` gauges.
    expect(e.types.get('flowlb_primary_process_cpu_seconds_total')).toBe('counter');
    expect(e.types.has('flowlb_primary_nodejs_active_handles_total')).toBe(false);
    // Every metric name carries the prefix, and no label is per flow or per bucket.
    for (const s of e.samples) {
      expect(s.name.startsWith('flowlb_')).toBe(true);
      for (const k of Object.keys(s.labels)) expect(['worker', 'reason', 'backend', 'outcome', 'kind', 'le', 'handler', 'mode', 'balancer', 'type', 'space', 'version', 'major', 'minor', 'patch', 'kind', 'listener', 'result']).toContain(k);
    }
  });

  it('keeps the README\'s metric tables and docs/metrics.md the same, row for row', () => {
    // Two copies drifted (a row missing in one, a row saying less in the other): every table row of
    // docs/metrics.md is in the README word for word (but for where "Balancing" is), and every flowlb_ metric row
    // of the README is in docs/metrics.md.
    const rows = (file: string): Map<string, string> => new Map(readFileSync(file, 'utf8').split('\n')
      .filter((l) => l.startsWith('| `')).map((l) => [l.split('|')[1]!.trim(), l.replace("see the README's Balancing", 'see Balancing')]));
    const readme = rows(path.join(ROOT, 'README.md')), docs = rows(DOCS);
    const differ = [...docs].filter(([k, row]) => readme.get(k) !== row).map(([k]) => k);
    expect(differ).toEqual([]);
    const missing = [...readme.keys()].filter((k) => (k.startsWith('`flowlb_') || k.includes('@<backend>') || k.startsWith('`dropped_')) && !docs.has(k));
    expect(missing).toEqual([]);
  });

  it('shows the worker CPU seconds counter when reports carry cpuUs', async () => {
    const { view, workers } = await unitService();
    workers.attach(0, fakeWorker(1));
    workers.ingestReport(0, { ...report(counters()), cpuUs: 2_500_000 } as WorkerReportMsg);
    const e = parseExposition(await createMetrics(view).render());
    expect(value(e, 'flowlb_worker_cpu_seconds_total', { worker: '0' })).toBe(2.5);
    expect(e.samples.some((s) => s.name === 'flowlb_worker_cpu_seconds_total' && s.labels.worker === '1')).toBe(false);
  });

  it('shows the worker CPU wait counter when reports carry it, and nothing where the kernel does not say', async () => {
    const { view, workers } = await unitService();
    workers.attach(0, fakeWorker(1));
    workers.attach(1, fakeWorker(2));
    workers.ingestReport(0, report(counters(), { schedWaitUs: 1_250_000 }));
    workers.ingestReport(1, report(counters(), { schedWaitUs: -1 }));
    const e = parseExposition(await createMetrics(view).render());
    expect(e.types.get('flowlb_worker_cpu_wait_seconds_total')).toBe('counter');
    expect(value(e, 'flowlb_worker_cpu_wait_seconds_total', { worker: '0' })).toBe(1.25);
    expect(e.samples.some((s) => s.name === 'flowlb_worker_cpu_wait_seconds_total' && s.labels.worker === '1')).toBe(false);
  });
});

// ---- integration: a real cluster over loopback ----

interface Traffic { sent: () => number; stop: () => Promise<void> }

/** `flows` client sockets (distinct source ports, so both workers get flows) each sending a datagram per tick. */
async function startTraffic(port: number, flows = 32, tickMs = 50): Promise<Traffic> {
  const sockets = await Promise.all(Array.from({ length: flows }, () => new Promise<dgram.Socket>((resolve) => {
    const s = dgram.createSocket('udp4');
    s.on('message', () => {});
    s.on('error', () => {});
    s.bind(0, '127.0.0.1', () => resolve(s));
  })));
  let sent = 0;
  const payload = Buffer.from('flowlb metrics test');
  const tick = (): void => { for (const s of sockets) { s.send(payload, port, '127.0.0.1'); sent++; } };
  tick();
  const timer = setInterval(tick, tickMs);
  let stopped: Promise<void> | null = null;
  return {
    sent: () => sent,
    stop: () => {
      clearInterval(timer);
      stopped ??= Promise.all(sockets.map((s) => new Promise<void>((r) => s.close(() => r())))).then(() => {});
      return stopped;
    },
  };
}

async function scrape(url: string): Promise<Exposition> {
  const res = await fetch(`${url}/metrics`);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parseExposition(await res.text());
}

describe('metrics of a running cluster', () => {
  const cleanups: (() => Promise<unknown>)[] = [];
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'flowlb-metrics-'));

  beforeAll(() => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p .)`);
  });
  afterEach(async () => {
    while (cleanups.length > 0) await cleanups.pop()!();
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('counts datagrams the kernel dropped at the front socket while the primary was stopped', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--workers', '1']);
    cleanups.push(() => svc.stop('SIGKILL'));
    const scrape = async (): Promise<number | undefined> => {
      const line = (await svc.metrics()).split('\n').find((l) => l.startsWith('flowlb_socket_receive_drops_total{'));
      return line === undefined ? undefined : Number(line.split(' ').pop());
    };
    expect(await scrape()).toBe(0);
    const c = dgram.createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    // Stop the primary (it stops reading) and send more than any receive buffer holds: 4,000 x 1 KB.
    process.kill(svc.proc.pid!, 'SIGSTOP');
    try {
      const payload = Buffer.alloc(1000);
      for (let i = 0; i < 4000; i++) {
        await new Promise<void>((r) => c.send(payload, svc.udpPort, '127.0.0.1', () => r()));
      }
    } finally {
      process.kill(svc.proc.pid!, 'SIGCONT');
      c.close();
    }
    const drops = await waitFor(async () => { const d = await scrape(); return d !== undefined && d > 0 ? d : null; }, 5000, 'kernel drops in /metrics');
    // What the kernel kept was read and dispatched; what it dropped never reached flowlb's own counters.
    const st = await waitFor(async () => { const s = await svc.status(); return s.received + drops === 4000 ? s : null; }, 5000, 'received + kernel drops = sent');
    expect(st.received).toBeGreaterThan(0);
    expect(st.kernelDrops).toEqual([drops]);
  });

  it('counts kernel drops of its own IPv6 socket only, not of another program\'s socket on the same port', async () => {
    const svc = await startFlowlb(['--listen', '[::1]:0', '--http', '127.0.0.1:0', '--workers', '1', '--log-level', 'warn']);
    cleanups.push(() => svc.stop('SIGKILL'));
    // Another program's IPv6 socket on the same port (dual-stack, bound to the IPv4-mapped loopback), never read.
    const other = dgram.createSocket({ type: 'udp6', ipv6Only: false });
    await new Promise<void>((r) => other.bind(svc.udpPort, '::ffff:127.0.0.1', () => r()));
    other.setRecvBufferSize(4096);
    const c = dgram.createSocket('udp4');
    await new Promise<void>((r) => c.bind(0, '127.0.0.1', () => r()));
    try {
      const payload = Buffer.alloc(1000);
      for (let i = 0; i < 300; i++) await new Promise<void>((r) => c.send(payload, svc.udpPort, '127.0.0.1', () => r()));
      const own = (await svc.metrics()).split('\n').find((l) => l.startsWith('flowlb_socket_receive_drops_total{'));
      // Matched by port alone, the other socket's drops were counted as flowlb's (and fell back when it closed).
      expect(own).toBe(`flowlb_socket_receive_drops_total{listener="[::1]:${svc.udpPort}"} 0`);
    } finally {
      c.close();
      other.close();
    }
  });

  it('keeps the conservation identity in every scrape and every worker\'s counters rise', async () => {
    const svc = await startFlowlb([...LOOPBACK, '--workers', '2']);
    cleanups.push(svc.stop);
    const traffic = await startTraffic(svc.udpPort);
    cleanups.push(traffic.stop);

    // Reports arrive every 200 ms: wait until both workers have handled packets.
    const first = await waitFor(async () => {
      const e = await scrape(svc.httpUrl);
      const handled = byWorker(e, 'flowlb_handled_packets_total');
      return handled.size === 2 && [...handled.values()].every((x) => x > 0) ? e : null;
    }, 15_000, 'both workers to report handled packets', 100);
    expect(conservationGap(first)).toBe(0);

    // Scrapes while traffic flows: the identity is exact in each of them.
    for (let i = 0; i < 5; i++) expect(conservationGap(await scrape(svc.httpUrl))).toBe(0);

    const second = await waitFor(async () => {
      const e = await scrape(svc.httpUrl);
      const rose = (name: string): boolean => {
        const a = byWorker(first, name), b = byWorker(e, name);
        return b.size === 2 && [...b].every(([w, x]) => x > a.get(w)!);
      };
      const names = ['flowlb_dispatched_packets_total', 'flowlb_dispatched_bytes_total', 'flowlb_batches_total',
        'flowlb_worker_received_packets_total', 'flowlb_handled_packets_total', 'flowlb_replied_packets_total', 'flowlb_replied_bytes_total'];
      return names.every(rose) ? e : null;
    }, 15_000, 'every worker counter to rise', 100);
    expect(conservationGap(second)).toBe(0);
    expect(value(second, 'flowlb_received_packets_total')).toBeGreaterThan(value(first, 'flowlb_received_packets_total'));
    expect(total(second, 'flowlb_dropped_packets_total')).toBe(0);
    expect(total(second, 'flowlb_buckets_owned') + value(second, 'flowlb_bucket_migrations_in_progress')).toBe(1024);
    for (const w of ['0', '1']) {
      expect(value(second, 'flowlb_worker_up', { worker: w })).toBe(1);
      expect(value(second, 'flowlb_worker_resident_memory_bytes', { worker: w })).toBeGreaterThan(10_000_000);
      expect(value(second, 'flowlb_flows_active', { worker: w })).toBeGreaterThan(0);
    }
    expect(histogram(second, 'flowlb_dispatch_latency_seconds').count).toBeGreaterThan(0);
    expect(value(second, 'flowlb_primary_process_resident_memory_bytes')).toBeGreaterThan(0);

    // After the traffic stops, every datagram sent was received and every one dispatched was handled.
    await traffic.stop();
    const sent = traffic.sent();
    const settled = await waitFor(async () => {
      const e = await scrape(svc.httpUrl);
      return value(e, 'flowlb_received_packets_total') === sent && total(e, 'flowlb_handled_packets_total') === sent ? e : null;
    }, 10_000, 'the last packets to be handled and reported', 100);
    expect(conservationGap(settled)).toBe(0);
  });

  it('reports proxy backends: requests, responses and a refusing backend as down', async () => {
    // The proxy handler wrapped with the counters() shape docs/metrics.md asks handlers for.
    const handlerFile = path.join(tmp, 'proxy-with-counters.js');
    writeFileSync(handlerFile, `
import { createProxyHandler } from ${JSON.stringify(pathToFileURL(path.join(ROOT, 'dist/src/handlers/proxy.js')).href)};
export default async function (ctx) {
  const handler = await createProxyHandler(ctx);
  handler.counters = () => {
    const s = handler.stats;
    const out = { dropped_no_backend: s.droppedNoBackend, dropped_connect_failed: s.droppedConnectFailed,
      dropped_queue_full: s.droppedQueueFull, dropped_migrating: s.droppedMigrating, active_upstreams: s.activeUpstreams };
    s.backendKeys.forEach((key, i) => {
      out['requests@' + key] = s.requests[i]; out['responses@' + key] = s.responses[i];
      out['refused@' + key] = s.refused[i]; out['send_errors@' + key] = s.sendErrors[i];
      out['socket_errors@' + key] = s.socketErrors[i]; out['connect_errors@' + key] = s.connectErrors[i];
    });
    return out;
  };
  return handler;
}
`);
    const backend = dgram.createSocket('udp4');
    backend.on('message', (msg, rinfo) => backend.send(msg, rinfo.port, rinfo.address));
    await new Promise<void>((r) => backend.bind(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => backend.close(() => r())));
    const closed = dgram.createSocket('udp4');
    await new Promise<void>((r) => closed.bind(0, '127.0.0.1', () => r()));
    const closedPort = closed.address().port;
    await new Promise<void>((r) => closed.close(() => r()));
    const live = `127.0.0.1:${backend.address().port}`;
    const dead = `127.0.0.1:${closedPort}`;

    const svc = await startFlowlb([...LOOPBACK, '--workers', '2', '--handler', handlerFile, '--backend', live, '--backend', dead]);
    cleanups.push(svc.stop);
    const traffic = await startTraffic(svc.udpPort, 32, 50);
    cleanups.push(traffic.stop);

    const e = await waitFor(async () => {
      const x = await scrape(svc.httpUrl);
      const ok = value(x, 'flowlb_backend_responses_total', { backend: live }) > 0
        && value(x, 'flowlb_backend_errors_total', { backend: dead, kind: 'refused' }) > 0;
      return ok ? x : null;
    }, 15_000, 'backend counters of both backends', 100);
    expect(value(e, 'flowlb_backend_requests_total', { backend: live })).toBeGreaterThan(0);
    expect(value(e, 'flowlb_backend_requests_total', { backend: dead })).toBeGreaterThan(0);
    expect(value(e, 'flowlb_backend_up', { backend: live })).toBe(1);
    expect(value(e, 'flowlb_backend_up', { backend: dead })).toBe(0);
    expect(value(e, 'flowlb_proxy_upstream_sockets')).toBeGreaterThan(0);
    expect(conservationGap(e)).toBe(0);
  });
});
