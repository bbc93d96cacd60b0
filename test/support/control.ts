/**
 * The primary's control-plane objects (dispatcher, worker set, migrator, balancer) wired together without any
 * process or socket, for unit tests of what they compute; and report/counter builders for fake worker reports.
 */
import { defaultConfig, type FlowlbConfig } from '../../src/config.js';
import { Balancer } from '../../src/control/balancer.js';
import { Migrator } from '../../src/control/migrator.js';
import { LATENCY_BOUNDS_MS, type WorkerCounters } from '../../src/control/protocol.js';
import { WorkerSet, type WorkerReportMsg } from '../../src/control/worker-set.js';
import { DROP_REASON_COUNT } from '../../src/datapath/counters.js';
import { Dispatcher, type ChannelSink } from '../../src/datapath/dispatcher.js';
import { loadHasher } from '../../src/datapath/tuple.js';
import { createLogger } from '../../src/log.js';
import type { ServiceView } from '../../src/metrics/http.js';

export const quiet = createLogger('error', {}, () => {});

export function counters(over: Partial<WorkerCounters> = {}): WorkerCounters {
  return {
    rxPackets: 0, rxBytes: 0, handled: 0, replies: 0, replyBytes: 0, replyErrors: 0, flowsCreated: 0, flowsExpired: 0,
    flowsActive: 0, handlerCrashes: 0, drops: new Array(DROP_REASON_COUNT).fill(0),
    latencyCounts: new Array(LATENCY_BOUNDS_MS.length + 1).fill(0), latencySumMs: 0, ...over,
  };
}

export function report(c: WorkerCounters, extra: Partial<WorkerReportMsg> = {}): WorkerReportMsg {
  return {
    t: 'report', seq: 1, intervalMs: 200, cpuUtil: 0.5, elu: 0.4, queueDepth: 7, peakQueueDepth: 9, activeQueues: 2,
    counters: c, memRss: 50_000_000, cpuUs: 0, cpuLimit: 0, schedRun: -1, schedWait: -1, schedWaitUs: -1, ...extra,
  };
}

export const fakeWorker = (pid: number): never => ({ process: { pid } }) as never;
export const sink: ChannelSink = { write: () => true, writableLength: 0 };

export interface UnitService { view: ServiceView; dispatcher: Dispatcher; workers: WorkerSet; migrator: Migrator; balancer: Balancer }

export async function unitService(over: Partial<FlowlbConfig> = {}): Promise<UnitService> {
  const config: FlowlbConfig = { ...defaultConfig(), workers: 2, buckets: 64, ...over };
  const dispatcher = new Dispatcher({
    buckets: config.buckets, maxWorkers: config.workers, maxHolds: 4, maxDatagramBytes: 1000,
    channelLimitBytes: 1 << 20, holdLimit: 100, hasher: await loadHasher(),
  });
  dispatcher.setListeners([{ family: 4, port: 5300, address: new Uint8Array([127, 0, 0, 1]) }]);
  const workers = new WorkerSet(config.workers);
  const migrator = new Migrator(dispatcher, { send: () => true, alive: () => true, lastProgressMs: () => 0 }, 1000, quiet, () => {});
  const balancer = new Balancer(config, dispatcher, migrator, workers, quiet);
  balancer.initialAssign(() => {});
  const view: ServiceView = { config, dispatcher, workers, balancer, migrator, udp: [], log: quiet };
  return { view, dispatcher, workers, migrator, balancer };
}
