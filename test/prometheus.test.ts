/**
 * flowlb under a real Prometheus: a server started here on loopback (temp config and storage) scrapes a running
 * cluster every second while traffic flows; the test asks Prometheus's HTTP API until every worker's handled
 * packets show an increase, checks the conservation identity in PromQL and that Prometheus evaluates every
 * rule of deploy/alerts.yml without error. promtool checks the exposition (lint included), the rules and the
 * example config, and unit-tests the alerts (each fires in its scenario, none in a healthy one).
 *
 * Needs `npx tsc -p .` and Prometheus + promtool (scripts/install-prometheus.sh); without them it fails, it is
 * not skipped.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { CLI, LOOPBACK, ROOT, startFlowlb, waitFor } from './support/service.js';

const ALERTS = path.join(ROOT, 'deploy/alerts.yml');
const PROM_CONFIG = path.join(ROOT, 'deploy/prometheus.yml');
const WORKERS = 2;

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function promtool(args: string[], input?: string): { code: number | null; out: string } {
  const r = spawnSync('promtool', args, { input, encoding: 'utf8', timeout: 20_000 });
  return { code: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

interface Child { proc: ChildProcess; output: () => string; stop: () => Promise<void> }

function startChild(cmd: string, args: string[]): Child {
  const proc = spawn(cmd, args, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout!.setEncoding('utf8').on('data', (c: string) => { out += c; });
  proc.stderr!.setEncoding('utf8').on('data', (c: string) => { out += c; });
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    proc, output: () => out,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 8000);
      await exited;
      clearTimeout(timer);
    },
  };
}

interface PromVectorSample { metric: Record<string, string>; value: [number, string] }

async function query(promUrl: string, expr: string): Promise<PromVectorSample[]> {
  const res = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(expr)}`);
  const body = (await res.json()) as { status: string; error?: string; data?: { resultType: string; result: PromVectorSample[] } };
  if (body.status !== 'success') throw new Error(`query ${expr} failed: ${body.error}`);
  return body.data!.result;
}

describe('flowlb under Prometheus', () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'flowlb-prom-'));
  const stops: (() => Promise<unknown> | void)[] = [];
  let flowlbHttp = '';
  let promUrl = '';
  let prom: Child;

  beforeAll(async () => {
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p .)`);
    for (const tool of ['prometheus', 'promtool']) {
      const r = spawnSync(tool, ['--version'], { encoding: 'utf8' });
      if (r.error || r.status !== 0) throw new Error(`${tool} is required and was not found: run scripts/install-prometheus.sh`);
    }

    const flowlb = await startFlowlb([...LOOPBACK, '--workers', String(WORKERS)]);
    stops.push(flowlb.stop);
    const udpPort = flowlb.udpPort;
    flowlbHttp = `127.0.0.1:${flowlb.httpPort}`;

    // Traffic from 32 source ports (so both workers get flows), ~640 datagrams/s, for the whole test.
    const sockets = await Promise.all(Array.from({ length: 32 }, () => new Promise<dgram.Socket>((resolve) => {
      const s = dgram.createSocket('udp4');
      s.on('message', () => {});
      s.on('error', () => {});
      s.bind(0, '127.0.0.1', () => resolve(s));
    })));
    const timer = setInterval(() => { for (const s of sockets) s.send('prometheus test', udpPort, '127.0.0.1'); }, 50);
    stops.push(() => { clearInterval(timer); for (const s of sockets) s.close(); });

    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    const config = path.join(tmp, 'prometheus.yml');
    writeFileSync(config, [
      'global:',
      '  scrape_interval: 1s',
      '  scrape_timeout: 1s',
      '  evaluation_interval: 1s',
      'rule_files:',
      `  - ${JSON.stringify(ALERTS)}`,
      'scrape_configs:',
      '  - job_name: flowlb',
      '    static_configs:',
      `      - targets: [${JSON.stringify(flowlbHttp)}]`,
      '',
    ].join('\n'));
    prom = startChild('prometheus', [
      `--config.file=${config}`, `--storage.tsdb.path=${path.join(tmp, 'data')}`, `--web.listen-address=127.0.0.1:${port}`,
      '--log.level=warn',
    ]);
    stops.push(prom.stop);
    await waitFor(async () => {
      if (prom.proc.exitCode !== null) throw new Error(`prometheus exited: ${prom.output()}`);
      return (await fetch(`${promUrl}/-/ready`)).status === 200;
    }, 20_000, 'Prometheus to be ready', 200);
  });

  afterAll(async () => {
    while (stops.length > 0) await stops.pop()!();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('scrapes every worker\'s rising counters and keeps the identity in PromQL', async () => {
    const rising = await waitFor(async () => {
      const r = await query(promUrl, 'increase(flowlb_handled_packets_total{job="flowlb"}[10s])');
      const workers = r.filter((s) => Number(s.value[1]) > 0).map((s) => s.metric.worker).sort();
      return workers.length === WORKERS ? r : null;
    }, 20_000, 'an increase of flowlb_handled_packets_total for every worker', 200);
    expect(rising.map((s) => s.metric.worker).sort()).toEqual(['0', '1']);

    const up = await query(promUrl, 'up{job="flowlb"}');
    expect(up.map((s) => s.value[1])).toEqual(['1']);
    // Every series of one scrape has that scrape's timestamp, so the identity holds exactly at any instant.
    const gap = await query(promUrl,
      'sum(flowlb_received_packets_total) - sum(flowlb_dispatched_packets_total) - sum(flowlb_primary_dropped_packets_total) - sum(flowlb_held_packets)');
    expect(gap.map((s) => Number(s.value[1]))).toEqual([0]);
    const reasons = await query(promUrl, 'flowlb_dropped_packets_total');
    expect(reasons.length).toBeGreaterThanOrEqual(12);
    const rate = await query(promUrl, 'sum(rate(flowlb_received_packets_total[5s]))');
    expect(Number(rate[0]!.value[1])).toBeGreaterThan(0);
  });

  it('evaluates every alert rule against live data without error, none firing', async () => {
    const groups = await waitFor(async () => {
      const res = await fetch(`${promUrl}/api/v1/rules`);
      const body = (await res.json()) as { data: { groups: { name: string; rules: { name: string; health: string; lastError?: string; state?: string }[] }[] } };
      const rules = body.data.groups.flatMap((g) => g.rules);
      return rules.length > 0 && rules.every((r) => r.health !== 'unknown') ? body.data.groups : null;
    }, 15_000, 'every rule to be evaluated', 200);
    const rules = groups.flatMap((g) => g.rules);
    expect(rules.map((r) => r.name).sort()).toEqual([
      'FlowlbAllBackendsDown', 'FlowlbBackendDown', 'FlowlbConfigReloadRejected', 'FlowlbDown', 'FlowlbDropRatioHigh', 'FlowlbImbalanceHigh', 'FlowlbKernelReceiveDrops',
      'FlowlbMigrationTimeouts', 'FlowlbPacketsDropped', 'FlowlbProxyDrops', 'FlowlbQueueNearLimit', 'FlowlbWorkerCpuContention',
      'FlowlbWorkerDown', 'FlowlbWorkerRestarting',
    ]);
    for (const r of rules) {
      expect(r.health, `${r.name}: ${r.lastError ?? ''}`).toBe('ok');
      expect(r.state, r.name).not.toBe('firing');
    }
  });

  it('passes promtool check metrics on the exposition, lint included', async () => {
    const text = await (await fetch(`http://${flowlbHttp}/metrics`)).text();
    const r = promtool(['check', 'metrics'], text);
    expect(r.out).toBe('');
    expect(r.code).toBe(0);
  });

  it('passes promtool check rules and check config on deploy/', () => {
    const rules = promtool(['check', 'rules', ALERTS]);
    expect(rules.code, rules.out).toBe(0);
    expect(rules.out).toContain('SUCCESS: 14 rules found');
    const config = promtool(['check', 'config', PROM_CONFIG]);
    expect(config.code, config.out).toBe(0);
  });

  it('fires each alert in its scenario and none when healthy (promtool test rules)', () => {
    const file = path.join(tmp, 'alerts.test.yml');
    writeFileSync(file, alertTests(ALERTS));
    const r = promtool(['test', 'rules', file]);
    expect(r.out).toContain('SUCCESS');
    expect(r.code, r.out).toBe(0);
  });
});

/** promtool unit tests for deploy/alerts.yml: a sick cluster where every alert fires, a healthy one where none does. */
function alertTests(rulesFile: string): string {
  const names = [
    'FlowlbDown', 'FlowlbWorkerDown', 'FlowlbWorkerRestarting', 'FlowlbPacketsDropped', 'FlowlbDropRatioHigh',
    'FlowlbImbalanceHigh', 'FlowlbQueueNearLimit', 'FlowlbMigrationTimeouts', 'FlowlbKernelReceiveDrops',
    'FlowlbWorkerCpuContention', 'FlowlbBackendDown', 'FlowlbAllBackendsDown', 'FlowlbProxyDrops', 'FlowlbConfigReloadRejected',
  ];
  const quiet = names.map((n) => `      - eval_time: 10m\n        alertname: ${n}\n        exp_alerts: []`).join('\n');
  return `rule_files:
  - ${JSON.stringify(rulesFile)}
evaluation_interval: 1m
tests:
  - name: sick
    interval: 1m
    input_series:
      - series: 'up{job="flowlb",instance="a"}'
        values: '1 1 0x10'
      - series: 'flowlb_worker_up{job="flowlb",instance="a",worker="1"}'
        values: '1 0x10'
      - series: 'flowlb_worker_restarts_total{job="flowlb",instance="a",worker="1"}'
        values: '0 1 2 3 4 5x10'
      - series: 'flowlb_queue_depth_packets{job="flowlb",instance="a",worker="0"}'
        values: '7000x10'
      - series: 'flowlb_queue_depth_packets{job="flowlb",instance="a",worker="1"}'
        values: '10x10'
      - series: 'flowlb_queue_limit_packets{job="flowlb",instance="a"}'
        values: '8192x10'
      - series: 'flowlb_dropped_packets_total{job="flowlb",instance="a",reason="queue_full"}'
        values: '0+600x10'
      - series: 'flowlb_dropped_packets_total{job="flowlb",instance="a",reason="oversize"}'
        values: '0x10'
      - series: 'flowlb_received_packets_total{job="flowlb",instance="a"}'
        values: '0+6000x10'
      - series: 'flowlb_imbalance_ratio{job="flowlb",instance="a"}'
        values: '0.3x10'
      - series: 'flowlb_event_loop_utilization_ratio{job="flowlb",instance="a",worker="0"}'
        values: '0.9x10'
      - series: 'flowlb_event_loop_utilization_ratio{job="flowlb",instance="a",worker="1"}'
        values: '0.4x10'
      - series: 'flowlb_bucket_migrations_total{job="flowlb",instance="a",outcome="timeout"}'
        values: '0 0 0 0 0 0 1x5'
      - series: 'flowlb_socket_receive_drops_total{job="flowlb",instance="a",listener="127.0.0.1:5300"}'
        values: '0+600x10'
      - series: 'flowlb_worker_cpu_wait_seconds_total{job="flowlb",instance="a",worker="0"}'
        values: '0+24x20'
      - series: 'flowlb_worker_cpu_wait_seconds_total{job="flowlb",instance="a",worker="1"}'
        values: '0+6x20'
      - series: 'flowlb_backend_up{job="flowlb",instance="a",backend="10.0.0.1:53"}'
        values: '1x10'
      - series: 'flowlb_backend_up{job="flowlb",instance="a",backend="10.0.0.2:53"}'
        values: '1 0x10'
      - series: 'flowlb_backend_up{job="flowlb",instance="b",backend="10.0.0.3:53"}'
        values: '1 1 1 1 1 1 0x10'
      - series: 'flowlb_backend_up{job="flowlb",instance="c",backend="10.0.0.4:53"}'
        values: '1 0 0 1 0 0 1 0 0 1 0 0 1 0 0 1'
      - series: 'flowlb_proxy_dropped_packets_total{job="flowlb",instance="a",reason="connect_failed"}'
        values: '0+300x10'
      - series: 'flowlb_proxy_dropped_packets_total{job="flowlb",instance="a",reason="no_backend"}'
        values: '0x10'
      # The proxy's drops are in flowlb_dropped_packets_total too: paged once, by FlowlbProxyDrops.
      - series: 'flowlb_dropped_packets_total{job="flowlb",instance="a",reason="connect_failed"}'
        values: '0+300x10'
      - series: 'flowlb_config_last_reload_successful{job="flowlb",instance="a"}'
        values: '1 1 1 0x10'
      - series: 'flowlb_worker_restarts_total{job="flowlb",instance="b",worker="0"}'
        values: '0 1 2x10'
    alert_rule_test:
      - eval_time: 7m
        alertname: FlowlbConfigReloadRejected
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a }
            exp_annotations:
              summary: 'flowlb a: the last config reload was rejected'
              description: 'The config file was re-read (SIGHUP) and refused; flowlb runs the previous config. The log line "config reload rejected" says why; fix the file and send SIGHUP again.'
      - eval_time: 10m
        alertname: FlowlbBackendDown
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, backend: '10.0.0.2:53' }
            exp_annotations:
              summary: 'flowlb a: backend 10.0.0.2:53 is down'
              description: 'The backend has been failing (refused datagrams or connects, or no answer for handlerOptions.responseTimeout) most of the last 5 minutes; the proxy sends its flows to the other backends (flowlb_backend_down_workers counts the workers that have it out of their table). A backend that fails silently (no ICMP) is seen only with responseTimeout set: otherwise compare flowlb_backend_requests_total with flowlb_backend_responses_total.'
          - exp_labels: { severity: warning, job: flowlb, instance: b, backend: '10.0.0.3:53' }
            exp_annotations:
              summary: 'flowlb b: backend 10.0.0.3:53 is down'
              description: 'The backend has been failing (refused datagrams or connects, or no answer for handlerOptions.responseTimeout) most of the last 5 minutes; the proxy sends its flows to the other backends (flowlb_backend_down_workers counts the workers that have it out of their table). A backend that fails silently (no ICMP) is seen only with responseTimeout set: otherwise compare flowlb_backend_requests_total with flowlb_backend_responses_total.'
          # Gone, but read 1 every third minute (back in the tables after failTimeout): '== 0 for 2m' never fired.
          - exp_labels: { severity: warning, job: flowlb, instance: c, backend: '10.0.0.4:53' }
            exp_annotations:
              summary: 'flowlb c: backend 10.0.0.4:53 is down'
              description: 'The backend has been failing (refused datagrams or connects, or no answer for handlerOptions.responseTimeout) most of the last 5 minutes; the proxy sends its flows to the other backends (flowlb_backend_down_workers counts the workers that have it out of their table). A backend that fails silently (no ICMP) is seen only with responseTimeout set: otherwise compare flowlb_backend_requests_total with flowlb_backend_responses_total.'
      - eval_time: 10m
        alertname: FlowlbAllBackendsDown
        exp_alerts:
          - exp_labels: { severity: critical, job: flowlb, instance: b }
            exp_annotations:
              summary: 'flowlb b: every proxy backend is down'
              description: 'Every backend has been failing most of the last 5 minutes: proxied traffic is being lost.'
          - exp_labels: { severity: critical, job: flowlb, instance: c }
            exp_annotations:
              summary: 'flowlb c: every proxy backend is down'
              description: 'Every backend has been failing most of the last 5 minutes: proxied traffic is being lost.'
      - eval_time: 7m
        alertname: FlowlbProxyDrops
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, reason: connect_failed }
            exp_annotations:
              summary: 'flowlb a proxy drops 5 datagrams/s (connect_failed)'
              description: 'no_backend: no backend has a weight; connect_failed: upstream connects fail (DNS, or the file descriptor limit: raise ulimit -n or shorten the idle timeout); preconnect_queue_full: many packets while a flow connects; migrating: packets queued for a connect when the flow moved. See docs/metrics.md.'
      - eval_time: 16m
        alertname: FlowlbWorkerCpuContention
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, worker: '0' }
            exp_annotations:
              summary: 'flowlb worker 0 on a waits for a CPU 40% of the time'
              description: 'Other processes (or a CPU quota) take the worker''s core: its event loop was ready to run but waited more than a quarter of the time for 10 minutes. The balancer gives it less load (its imbalance index falls); if every worker waits, the host is oversubscribed: give flowlb dedicated cores or fewer workers.'
      - eval_time: 7m
        alertname: FlowlbKernelReceiveDrops
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, listener: '127.0.0.1:5300' }
            exp_annotations:
              summary: 'flowlb a loses 10 datagrams/s at 127.0.0.1:5300 in the kernel'
              description: 'The primary does not read the front socket fast enough (CPU starved, or bursts beyond its receive buffer). Give the primary a core of its own, or raise net.core.rmem_max (flowlb asks for 8 MB).'
      - eval_time: 7m
        alertname: FlowlbDown
        exp_alerts:
          - exp_labels: { severity: critical, job: flowlb, instance: a }
            exp_annotations:
              summary: 'flowlb a cannot be scraped'
              description: 'The status listener has not answered /metrics for 1 minute: the primary is down or unreachable.'
      - eval_time: 7m
        alertname: FlowlbWorkerDown
        exp_alerts:
          - exp_labels: { severity: critical, job: flowlb, instance: a, worker: '1' }
            exp_annotations:
              summary: 'flowlb worker 1 on a is down'
              description: 'Lane 1 has had no ready worker for 1 minute. The primary stops respawning a lane that crashes more than 5 times in 30 s; its buckets were moved to the other workers.'
      - eval_time: 7m
        alertname: FlowlbWorkerRestarting
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, worker: '1' }
            exp_annotations:
              summary: 'flowlb worker 1 on a restarted 5 times in 15m'
              description: 'Worker processes keep exiting; check the log for "worker exited" and the handler.'
      - eval_time: 7m
        alertname: FlowlbPacketsDropped
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, reason: queue_full }
            exp_annotations:
              summary: 'flowlb a drops 10 packets/s (queue_full)'
              description: 'Datagrams are being dropped for reason queue_full; see docs/metrics.md for what each reason means.'
      - eval_time: 7m
        alertname: FlowlbDropRatioHigh
        exp_alerts:
          - exp_labels: { severity: critical, job: flowlb, instance: a }
            exp_annotations:
              summary: 'flowlb a drops 15% of its packets'
              description: 'More than 1% of received datagrams were dropped for 5 minutes; group flowlb_dropped_packets_total by reason to see why.'
      - eval_time: 7m
        alertname: FlowlbImbalanceHigh
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a }
            exp_annotations:
              summary: 'flowlb a load imbalance 30% for 5m'
              description: 'The worst worker has been more than 20% of the total load away from its target share for 5 minutes: a few heavy flows (one bucket cannot be split) or a balancer that cannot move buckets (check flowlb_bucket_migrations_total{outcome!="done"}).'
      - eval_time: 7m
        alertname: FlowlbQueueNearLimit
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, worker: '0' }
            exp_annotations:
              summary: 'flowlb worker 0 on a queue at 7k packets'
              description: 'The worker''s queue has stayed above 80% of the overload limit (flowlb_queue_limit_packets): it is near shedding load and the balancer keeps moving buckets off it. The whole cluster may be saturated.'
      - eval_time: 7m
        alertname: FlowlbMigrationTimeouts
        exp_alerts:
          - exp_labels: { severity: warning, job: flowlb, instance: a, outcome: timeout }
            exp_annotations:
              summary: 'flowlb a: 1 bucket migrations timed out in 10m'
              description: 'A worker made no progress (no load report with packets handled) and did not hand over a bucket within the migration timeout (extended while it progresses, up to 4x). The new owner started the bucket''s flows without their state; if the old owner answers later, its handed-over packets are dropped as migration_late and its flow state is imported only where the new owner has none (flowlb_migration_late_flows_total{outcome="lost"} counts the rest).'
  - name: healthy
    interval: 1m
    input_series:
      - series: 'up{job="flowlb",instance="a"}'
        values: '1x12'
      - series: 'flowlb_worker_up{job="flowlb",instance="a",worker="0"}'
        values: '1x12'
      - series: 'flowlb_worker_restarts_total{job="flowlb",instance="a",worker="0"}'
        values: '1x12'
      - series: 'flowlb_queue_depth_packets{job="flowlb",instance="a",worker="0"}'
        values: '100x12'
      - series: 'flowlb_queue_limit_packets{job="flowlb",instance="a"}'
        values: '8192x12'
      - series: 'flowlb_dropped_packets_total{job="flowlb",instance="a",reason="queue_full"}'
        values: '0x12'
      - series: 'flowlb_received_packets_total{job="flowlb",instance="a"}'
        values: '0+6000x12'
      - series: 'flowlb_imbalance_ratio{job="flowlb",instance="a"}'
        values: '0.04x12'
      - series: 'flowlb_event_loop_utilization_ratio{job="flowlb",instance="a",worker="0"}'
        values: '0.8x12'
      # Light load: an uneven split the balancer leaves alone on purpose (every worker below minBusy) pages nobody.
      - series: 'flowlb_imbalance_ratio{job="flowlb",instance="b"}'
        values: '0.3x12'
      - series: 'flowlb_event_loop_utilization_ratio{job="flowlb",instance="b",worker="0"}'
        values: '0.2x12'
      - series: 'flowlb_event_loop_utilization_ratio{job="flowlb",instance="b",worker="1"}'
        values: '0.05x12'
      - series: 'flowlb_worker_cpu_wait_seconds_total{job="flowlb",instance="a",worker="0"}'
        values: '0+6x12'
      - series: 'flowlb_bucket_migrations_total{job="flowlb",instance="a",outcome="timeout"}'
        values: '0x12'
      - series: 'flowlb_backend_up{job="flowlb",instance="a",backend="10.0.0.1:53"}'
        values: '1x12'
      - series: 'flowlb_backend_up{job="flowlb",instance="a",backend="10.0.0.2:53"}'
        values: '1 0 1x10'
      - series: 'flowlb_proxy_dropped_packets_total{job="flowlb",instance="a",reason="connect_failed"}'
        values: '0+10x12'
    alert_rule_test:
${quiet}
`;
}
