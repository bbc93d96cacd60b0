/**
 * `flowlb serve`: builds the config (defaults <- --config file <- flags) and starts the primary.
 * Options carry no yargs `default`: a default there would always override the config file, so the
 * defaults live in config.ts and --help quotes them through `defaultDescription`.
 */
import type { CommandModule, Options } from 'yargs';

import {
  DEFAULT_BUCKETS,
  DEFAULT_HANDLER,
  DEFAULT_HTTP,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_LISTEN,
  DEFAULT_LOG_LEVEL,
  DEFAULT_BALANCE_MODE,
  DEFAULT_MAX_FLOWS_PER_WORKER,
  DEFAULT_QUEUE_LIMIT,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_INTERVAL_MS,
  MAX_BACKEND_WEIGHT,
  MAX_BUCKETS,
  MAX_UDP_PAYLOAD_BYTES,
  MAX_WORKERS,
  defaultWorkers,
  formatDuration,
  resolveConfig,
  type ServeFlags,
} from '../config.js';
import { createLogger } from '../log.js';

/** A single-valued option given as text; validation (and its error messages) is config.ts's job. */
function valueOption(describe: string, defaultDescription: string): Options {
  return { type: 'string', requiresArg: true, describe, defaultDescription };
}

function listOption(describe: string, defaultDescription: string): Options {
  return { type: 'string', array: true, requiresArg: true, describe, defaultDescription };
}

export const SERVE_OPTIONS = {
  listen: listOption(
    'UDP address to receive on: HOST:PORT, [IPv6]:PORT or localhost:PORT (port 0 = any free port); repeat for several',
    DEFAULT_LISTEN,
  ),
  workers: valueOption(`Worker processes, 1 to ${MAX_WORKERS}`, `${defaultWorkers()} (available CPUs)`),
  buckets: valueOption(`Hash buckets flows are grouped in, a power of two up to ${MAX_BUCKETS}`, String(DEFAULT_BUCKETS)),
  handler: valueOption('Packet handler: echo, proxy, sockperf (answers sockperf ping-pong), or the path of a module exporting a FlowHandler', DEFAULT_HANDLER),
  backend: listOption(
    `Upstream for the proxy handler, HOST:PORT[@WEIGHT] (weight 1 to ${MAX_BACKEND_WEIGHT}); repeat for several; replaces the config file's list`,
    'none',
  ),
  'idle-timeout': valueOption(
    'A flow ends after this long without packets (500ms, 60s, 5m, 1h or plain ms)',
    formatDuration(DEFAULT_IDLE_TIMEOUT_MS),
  ),
  config: valueOption('JSON config file; flags override its values; re-read on SIGHUP', 'none'),
  http: valueOption('Status and metrics HTTP address HOST:PORT, or off', DEFAULT_HTTP),
  'max-flows': valueOption('Most flows one worker tracks at once', String(DEFAULT_MAX_FLOWS_PER_WORKER)),
  'max-datagram': valueOption('Largest datagram accepted, in bytes; larger ones are counted (oversize) and dropped', String(MAX_UDP_PAYLOAD_BYTES)),
  mode: valueOption('Balancing mode: flow (a flow stays on one worker; buckets migrate with their state) or packet (stateless traffic such as DNS: an overloaded worker\'s packets go to the least-loaded workers)', DEFAULT_BALANCE_MODE),
  balance: {
    type: 'boolean',
    describe: 'Move buckets between workers by measured load; --no-balance keeps static hashing',
    defaultDescription: 'true',
  },
  'queue-limit': valueOption(
    'Packets queued in a worker beyond which it counts as overloaded and loses buckets at once',
    String(DEFAULT_QUEUE_LIMIT),
  ),
  'report-interval': valueOption('How often workers report their load', formatDuration(DEFAULT_REPORT_INTERVAL_MS)),
  'rebalance-interval': valueOption(
    'How often the balancer considers moving buckets',
    formatDuration(DEFAULT_REBALANCE_INTERVAL_MS),
  ),
  'log-level': valueOption('Log records written to stderr: debug, info, warn or error', DEFAULT_LOG_LEVEL),
} satisfies Record<string, Options>;

export const serveCommand: CommandModule<object, ServeFlags> = {
  command: 'serve',
  describe: 'Run the load balancer',
  builder: SERVE_OPTIONS,
  handler: async (argv) => {
    const config = await resolveConfig(argv);
    const log = createLogger(config.logLevel);
    // Loaded here rather than at the top so `flowlb gen`, `top` and `--help` do not load the primary's
    // cluster, socket and metrics modules they never use.
    const { startService } = await import('../control/primary.js');
    // The service keeps the process alive through its sockets and handles SIGINT/SIGTERM itself.
    await startService(config, log);
  },
};
