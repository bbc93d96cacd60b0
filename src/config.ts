/**
 * flowlb configuration: one readonly object, built once from defaults, an optional JSON file and flags
 * (flags win), validated once, then immutable. Defaults are named constants so the README and --help quote them.
 */
import os from 'node:os';

export const DEFAULT_LISTEN = '127.0.0.1:5300';
export const DEFAULT_HTTP = '127.0.0.1:9090';
export const DEFAULT_BUCKETS = 1024;
export const MAX_BUCKETS = 65536;
export const DEFAULT_IDLE_TIMEOUT_MS = 60_000;
export const DEFAULT_MAX_FLOWS_PER_WORKER = 262_144;
/** Largest UDP payload over IPv4 (65535 - 20 IP - 8 UDP). Larger datagrams cannot arrive over IPv4 and are dropped as oversize. */
export const MAX_DATAGRAM_BYTES = 65_507;
export const DEFAULT_SHUTDOWN_TIMEOUT_MS = 5_000;
export const DEFAULT_REPORT_INTERVAL_MS = 200;
export const DEFAULT_REBALANCE_INTERVAL_MS = 500;
/** Workers within this fraction of their target share are left alone. */
export const DEFAULT_DEAD_BAND = 0.05;
export const DEFAULT_MAX_MOVES_PER_ROUND = 16;
/** Packets queued in a worker beyond which it is overloaded and loses buckets at once. */
export const DEFAULT_QUEUE_LIMIT = 8192;
/** Packets one flow may have queued in a worker; beyond it the flow's new packets are dropped. */
export const DEFAULT_FLOW_QUEUE_LIMIT = 1024;
/** Deficit round robin quantum, in bytes. */
export const DEFAULT_QUANTUM_BYTES = 1500;
/** Packets held for a migrating bucket in the primary; beyond it they are dropped (reason hold_overflow). */
export const DEFAULT_HOLD_LIMIT = 4096;
export const DEFAULT_MIGRATION_TIMEOUT_MS = 2_000;
/** Bytes buffered towards one worker's channel beyond which packets are dropped (reason channel_full). */
export const DEFAULT_CHANNEL_LIMIT_BYTES = 8 * 1024 * 1024;

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export type BalanceMode = 'flow' | 'packet';

export interface Endpoint {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
}

export interface BackendSpec extends Endpoint {
  readonly weight: number;
}

export interface BalancerConfig {
  /** false: static hashing (buckets shared equally at start, moved only when a worker dies). */
  readonly enabled: boolean;
  readonly mode: BalanceMode;
  readonly reportIntervalMs: number;
  readonly rebalanceIntervalMs: number;
  readonly deadBand: number;
  readonly maxMovesPerRound: number;
  readonly queueLimit: number;
  readonly holdLimit: number;
  readonly migrationTimeoutMs: number;
}

export interface QueueConfig {
  readonly quantumBytes: number;
  readonly flowQueueLimit: number;
}

export interface FlowlbConfig {
  readonly listen: readonly Endpoint[];
  readonly workers: number;
  readonly buckets: number;
  /** 'echo', 'proxy', or an absolute path to a handler module. */
  readonly handler: string;
  readonly handlerOptions: Readonly<Record<string, unknown>>;
  readonly backends: readonly BackendSpec[];
  readonly idleTimeoutMs: number;
  /** Status/metrics HTTP listener; null disables it. */
  readonly http: Endpoint | null;
  readonly maxFlowsPerWorker: number;
  readonly channelLimitBytes: number;
  readonly shutdownTimeoutMs: number;
  readonly balancer: BalancerConfig;
  readonly queue: QueueConfig;
  readonly logLevel: LogLevel;
  /** Path of the config file it was loaded from (for SIGHUP reload), or null. */
  readonly configFile: string | null;
}

export function defaultWorkers(): number {
  return Math.max(1, os.availableParallelism());
}
