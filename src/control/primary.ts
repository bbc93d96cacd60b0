/**
 * The primary process: binds the front sockets, forks the workers (node:cluster) with an extra pipe each for
 * packet batches, dispatches every datagram by bucket, runs the balancer and migrations on ticks, serves
 * status/metrics over HTTP, replaces crashed workers, and shuts everything down on SIGINT/SIGTERM.
 */
import cluster, { type Worker } from 'node:cluster';
import dgram from 'node:dgram';
import type net from 'node:net';
import { fileURLToPath } from 'node:url';
import { formatEndpoint, reloadConfig, type Endpoint, type FlowlbConfig } from '../config.js';
import { Dispatcher } from '../datapath/dispatcher.js';
import { addressBytes, loadHasher } from '../datapath/tuple.js';
import { BindError, FlowlbError, HandlerLoadError } from '../errors.js';
import { closeCheckedHandler, instantiateHandler, loadHandlerFactory } from '../handlers/load.js';
import type { Logger } from '../log.js';
import { startHttp, type HttpServer } from '../metrics/http.js';
import { Balancer } from './balancer.js';
import { Migrator, type MigrationPeer } from './migrator.js';
import { isFlowlbMessage, type PrimaryToWorker, type WorkerToPrimary } from './protocol.js';
import { WorkerSet } from './worker-set.js';

/** Hold lanes: how many buckets may be migrating at once. */
const MAX_HOLDS = 64;
/** Start fails when no further worker became ready for this long (many workers on few cores start one after another). */
const WORKER_READY_TIMEOUT_MS = 15_000;
/** A repeat of a stop signal within this is the same request delivered twice, not a second Ctrl-C. */
const REPEATED_SIGNAL_MS = 250;
/** A lane that crashes this often within RESPAWN_WINDOW_MS is not restarted again. */
const MAX_RESPAWNS = 5;
const RESPAWN_WINDOW_MS = 30_000;

export interface RunningService {
  /** Actual bound UDP addresses (port 0 resolved). */
  readonly udp: readonly Endpoint[];
  readonly http: Endpoint | null;
  close(): Promise<void>;
}

async function bindFront(ep: Endpoint): Promise<dgram.Socket> {
  const socket = dgram.createSocket({ type: ep.family === 6 ? 'udp6' : 'udp4', ipv6Only: ep.family === 6 });
  await new Promise<void>((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException): void => {
      socket.close();
      const what = `listen address ${formatEndpoint(ep)}`;
      if (err.code === 'EADDRINUSE') reject(new BindError(`${what} is already in use`));
      else if (err.code === 'EADDRNOTAVAIL') reject(new BindError(`${what} is not an address of this host`));
      else if (err.code === 'EACCES') reject(new BindError(`${what}: permission denied`));
      else reject(new BindError(`${what} could not be bound: ${err.message}`));
    };
    socket.once('error', onError);
    socket.bind({ address: ep.host, port: ep.port, exclusive: true }, () => {
      socket.off('error', onError);
      resolve();
    });
  });
  // Bursts arrive faster than one event-loop turn drains them; a larger kernel buffer absorbs them
  // (the kernel caps it at net.core.rmem_max).
  try { socket.setRecvBufferSize(8 * 1024 * 1024); } catch { /* capped or refused: keep the default */ }
  return socket;
}

/** Settings a reload cannot change in a running service (sockets, processes, table size are fixed at start). */
const RESTART_ONLY: readonly (keyof FlowlbConfig)[] = [
  'listen', 'workers', 'buckets', 'handler', 'http', 'maxFlowsPerWorker', 'maxDatagramBytes', 'logLevel',
];

export async function startService(initialConfig: FlowlbConfig, log: Logger): Promise<RunningService> {
  let config = initialConfig;
  if (!cluster.isPrimary) throw new FlowlbError('ERR_INTERNAL', 'startService must run in the primary process');
  const hasher = await loadHasher();

  // Fail fast on a handler that does not load, before any socket or process exists.
  const factory = await loadHandlerFactory(config.handler);
  try {
    const probe = await instantiateHandler(factory, {
      workerId: -1, workers: config.workers, buckets: config.buckets, idleTimeoutMs: config.idleTimeoutMs,
      backends: config.backends, options: config.handlerOptions,
    });
    await closeCheckedHandler(probe, config.handler);
  } catch (err) {
    if (err instanceof FlowlbError) throw err;
    throw new HandlerLoadError(`handler ${config.handler} failed to start: ${err instanceof Error ? err.message : String(err)}`);
  }

  const fronts: dgram.Socket[] = [];
  try {
    for (const ep of config.listen) fronts.push(await bindFront(ep));
  } catch (err) {
    for (const s of fronts) s.close();
    throw err;
  }
  const udp: Endpoint[] = fronts.map((s, i) => {
    const a = s.address();
    return { host: a.address, port: a.port, family: config.listen[i]!.family };
  });

  const dispatcher = new Dispatcher({
    buckets: config.buckets, maxWorkers: config.workers, maxHolds: MAX_HOLDS, maxDatagramBytes: config.maxDatagramBytes,
    channelLimitBytes: config.channelLimitBytes, holdLimit: config.balancer.holdLimit, hasher,
  });
  dispatcher.setListeners(udp.map((u) => ({ family: u.family, port: u.port, address: addressBytes(u.host, u.family) })));

  const workers = new WorkerSet(config.workers);
  const peer: MigrationPeer = {
    send: (lane, msg, handle, done) => sendTo(lane, msg, handle, done),
    alive: (lane) => workers.isReady(lane),
    lastProgressMs: (lane) => workers.lastProgressMs(lane),
  };
  const migrator = new Migrator(dispatcher, peer, config.balancer.migrationTimeoutMs, log, (bucket, to) => {
    balancer.onBucketMoved(bucket, to);
  });
  const balancer = new Balancer(config, dispatcher, migrator, workers, log, (lane, msg) => sendTo(lane, msg));

  function sendTo(lane: number, msg: PrimaryToWorker, handle?: dgram.Socket, done?: () => void): boolean {
    const w = workers.worker(lane);
    if (!w || !w.isConnected()) return false;
    if (!workers.isListening(lane)) { workers.queue(lane, msg, handle, done); return true; }
    try {
      if (handle) w.send(msg, handle as never, done ? () => done() : undefined);
      else w.send(msg);
      return true;
    } catch {
      return false;
    }
  }

  // ---- the packet path: one listener function per front socket, created once ----
  fronts.forEach((socket, index) => {
    socket.on('message', (msg: Buffer, rinfo: dgram.RemoteInfo) => {
      dispatcher.dispatch(index, msg, rinfo.address, rinfo.family, rinfo.port);
    });
    socket.on('error', (err) => log.warn('front socket error', { err, listener: index }));
  });

  // ---- workers ----
  const workerMain = fileURLToPath(new URL('./worker-main.js', import.meta.url));
  cluster.setupPrimary({
    exec: workerMain,
    // fd 3 is cluster's IPC channel; fd 4 is the packet channel (no serialisation, real backpressure).
    stdio: ['inherit', 'inherit', 'inherit', 'ipc', 'pipe'],
    silent: false,
  });
  let configJson = JSON.stringify(config);
  let shuttingDown = false;
  /** Workers killed by the stall watchdog (see below), and its timer. */
  let stallKills = 0;
  let watchdog: NodeJS.Timeout | null = null;
  let startupError: Error | null = null;

  function fork(lane: number): Worker {
    const w = cluster.fork({ FLOWLB_CONFIG: configJson, FLOWLB_WORKER_ID: String(lane) });
    workers.attach(lane, w);
    const channel = w.process.stdio[4] as net.Socket;
    channel.on('error', (err) => log.debug('channel error', { err, worker: lane }));
    dispatcher.setSink(lane, channel);
    fronts.forEach((s, listener) => { sendTo(lane, { t: 'front', listener }, s); });
    w.on('message', (m: unknown, handle: unknown) => onWorkerMessage(lane, w, m, handle as dgram.Socket | undefined));
    w.on('exit', (code, signal) => onWorkerExit(lane, w, code, signal));
    // An IPC send to a worker that is exiting fails asynchronously (EPIPE) as an 'error' event; unheard, it took the
    // primary down with the whole service. The worker's 'exit' does the rest.
    w.on('error', (err) => log.debug('worker IPC error', { err, worker: lane }));
    return w;
  }

  function onWorkerMessage(lane: number, w: Worker, m: unknown, handle: dgram.Socket | undefined): void {
    if (!isFlowlbMessage(m) || workers.worker(lane) !== w) return;
    const msg = m as WorkerToPrimary;
    switch (msg.t) {
      case 'hello':
        for (const q of workers.listening(lane)) sendTo(lane, q.msg, q.handle, q.done);
        break;
      case 'ready':
        workers.markReady(lane, msg.pid);
        balancer.onWorkerReady(lane);
        log.info('worker ready', { worker: lane, pid: msg.pid });
        break;
      case 'report':
        dispatcher.markReport(lane);
        workers.ingestReport(lane, msg);
        balancer.onReport(lane, msg);
        break;
      case 'released':
        migrator.onReleased(lane, msg);
        break;
      case 'released-socket':
        migrator.onReleasedSocket(lane, msg, handle);
        break;
      case 'imported':
        migrator.onImported(lane, msg);
        break;
      case 'shed-frames':
        balancer.onShed(lane, Buffer.from(msg.frames, 'base64'), msg.packets);
        break;
      case 'fatal':
        log.error('worker failed to start', { worker: lane, message: msg.message });
        if (!workers.everReady(lane)) startupError ??= new HandlerLoadError(msg.message);
        break;
    }
  }

  function onWorkerExit(lane: number, w: Worker, code: number | null, signal: string | null): void {
    if (workers.worker(lane) !== w) return;
    const wasReady = workers.isReady(lane);
    const lost = shuttingDown ? 0 : workers.recordLost(lane, dispatcher.packetsIntoSink(lane), dispatcher.returnedSinceReport(lane));
    dispatcher.setSink(lane, null);
    workers.detach(lane);
    if (shuttingDown) return;
    log.warn('worker exited', { worker: lane, code, signal, packetsLostEstimate: lost });
    migrator.onWorkerExit(lane, (bucket) => balancer.pickEvacuationTarget(bucket, lane));
    balancer.onWorkerExit(lane);
    if (!wasReady && !workers.everReady(lane)) {
      startupError ??= new FlowlbError('ERR_WORKER', `worker ${lane} exited during start (code ${code}, signal ${signal})`);
      return;
    }
    if (workers.recordCrash(lane, MAX_RESPAWNS, RESPAWN_WINDOW_MS)) {
      log.error('worker keeps crashing; not restarting it', { worker: lane });
      return;
    }
    fork(lane);
  }

  // The status listener comes up before any worker: an address in use fails here, with one line and no worker
  // started (after the workers, their "worker ready" records came first).
  let reloads = 0, reloadsRejected = 0, lastReloadOk = true;
  /** Settings of the file the last applied reload could not apply (they need a restart); empty: none. */
  let restartNeeded: readonly string[] = [];
  let http: HttpServer | null = null;
  if (config.http) {
    try {
      http = await startHttp(config.http, {
        get config() { return config; }, dispatcher, workers, balancer, migrator, udp, log,
        get reloads() { return { ok: reloads, rejected: reloadsRejected, lastOk: lastReloadOk, restartNeeded }; },
        get stallKills() { return stallKills; },
      });
    } catch (err) {
      for (const s of fronts) try { s.close(); } catch { /* closed */ }
      throw err;
    }
  }

  // Signals are handled from before the first fork: one that arrives while the workers start stops them the
  // same way (exit 0), instead of killing the primary by the default action under workers still starting.
  let closing: Promise<void> | null = null;
  let signals = 0, firstSignalAt = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    const now = performance.now();
    if (++signals > 1) {
      // `timeout` and some supervisors deliver one stop request twice at once (to the process and to its group):
      // only a signal that comes later means "exit now".
      if (now - firstSignalAt < REPEATED_SIGNAL_MS) return;
      log.warn('second signal: exiting now', { signal });
      // Workers never outlive the primary: a worker stuck in its handler would not see the channel close. Their
      // exits are awaited (at most 500 ms) so they are reaped here, not left as zombies for init to collect.
      const live = workers.all().filter((w) => !w.isDead());
      const gone = Promise.all(live.map((w) => new Promise<void>((resolve) => w.once('exit', () => resolve()))));
      for (const w of live) try { w.process.kill('SIGKILL'); } catch { /* gone */ }
      void Promise.race([gone, new Promise((r) => setTimeout(r, 500))]).then(() => process.exit(1));
      return;
    }
    firstSignalAt = now;
    log.info('shutting down', { signal });
    close().then(() => process.exit(0), (err: unknown) => { log.error('shutdown failed', { err }); process.exit(1); });
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  for (let lane = 0; lane < config.workers; lane++) fork(lane);
  // Every bucket has an owner from the first packet on; packets that arrive before a worker reads its pipe wait in the pipe.
  balancer.initialAssign((lane, msg) => sendTo(lane, msg));

  // Wait until every worker is ready (or one failed).
  // The deadline moves on with every worker that becomes ready: 32 workers on 2 busy cores took more than 15 s in
  // all and failed although they were all coming up.
  let deadline = performance.now() + WORKER_READY_TIMEOUT_MS;
  let readySeen = 0;
  while (!workers.allReady() && startupError === null && closing === null && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 10));
    const ready = workers.readyCount();
    if (ready > readySeen) { readySeen = ready; deadline = performance.now() + WORKER_READY_TIMEOUT_MS; }
  }
  // Stopped by a signal while starting: close() is under way and the signal handler exits when it is done.
  if (closing !== null) return await new Promise<never>(() => { /* never resolves */ });
  if (startupError !== null || !workers.allReady()) {
    shuttingDown = true;
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    for (const s of fronts) try { s.close(); } catch { /* closed */ }
    for (const w of workers.all()) try { w.process.kill('SIGKILL'); } catch { /* gone */ }
    await http?.close().catch(() => undefined);
    throw startupError ?? new FlowlbError('ERR_WORKER', `${config.workers - workers.readyCount()} of ${config.workers} workers did not become ready (none for ${WORKER_READY_TIMEOUT_MS} ms)`);
  }
  balancer.start();

  // Watchdog: a worker stuck in its handler (an endless loop, a blocking call) is alive and "ready" but serves and
  // reports nothing; its flows get no answer. Past stallTimeout without a report it is killed, and crash
  // recovery hands its buckets to the others and forks a replacement (a handler that hangs every time ends up
  // not restarted, like one that crashes every time). Its queued packets and its flows' state are lost
  // (counted by the worker-down path); a SIGSTOPped worker is killed the same way.
  watchdog = setInterval(() => {
    const limit = config.stallTimeoutMs;
    if (limit <= 0 || shuttingDown) return;
    for (let lane = 0; lane < config.workers; lane++) {
      const w = workers.worker(lane);
      if (w === null || !workers.isReady(lane) || workers.reportAgeMs(lane) <= limit) continue;
      stallKills++;
      log.error('worker stalled (no load report); killing it', { worker: lane, pid: w.process.pid, silentMs: Math.round(workers.reportAgeMs(lane)) });
      try { w.process.kill('SIGKILL'); } catch { /* gone */ }
    }
  }, Math.min(1000, Math.max(100, config.balancer.reportIntervalMs)));
  watchdog.unref();

  const httpEndpoint = http?.endpoint ?? null;
  // One line on stdout whatever the log level: where the service listens (port 0 resolved).
  process.stdout.write(
    `flowlb listening udp=${udp.map(formatEndpoint).join(',')} http=${httpEndpoint ? formatEndpoint(httpEndpoint) : 'off'} ` +
    `workers=${config.workers} buckets=${config.buckets} handler=${config.handler} balancer=${config.balancer.enabled ? 'adaptive' : 'static'}\n`,
  );
  if ((config.handler === 'echo' || config.handler === 'sockperf') && config.backends.length > 0) {
    log.warn('backends are given but the handler does not use them (only proxy and handler modules do)', { handler: config.handler, backends: config.backends.length });
  }
  if ((config.handler === 'echo' || config.handler === 'sockperf') && Object.keys(config.handlerOptions).length > 0) {
    log.warn('handlerOptions are given but the handler takes none (only proxy and handler modules do)', { handler: config.handler, options: Object.keys(config.handlerOptions) });
  }
  log.info('listening', {
    udp: udp.map(formatEndpoint), http: httpEndpoint ? formatEndpoint(httpEndpoint) : null, workers: config.workers,
    buckets: config.buckets, handler: config.handler,
  });

  async function close(): Promise<void> {
    closing ??= (async () => {
      shuttingDown = true;
      if (watchdog !== null) clearInterval(watchdog);
      balancer.stop();
      for (const s of fronts) try { s.close(); } catch { /* closed */ }
      migrator.abortAll();
      dispatcher.flushAll();
      const exits = workers.all().map((w) => new Promise<void>((resolve) => {
        if (w.isDead()) { resolve(); return; }
        w.once('exit', () => resolve());
      }));
      for (let lane = 0; lane < config.workers; lane++) {
        const w = workers.worker(lane);
        if (!w) continue;
        // End of the channel tells the worker it has every packet; it serves them and exits.
        (w.process.stdio[4] as net.Socket | null)?.end();
        try { w.send({ t: 'shutdown' } satisfies PrimaryToWorker); } catch { /* gone */ }
      }
      const timer = setTimeout(() => {
        for (const w of workers.all()) if (!w.isDead()) { log.warn('worker did not stop in time; killing it', { pid: w.process.pid }); w.process.kill('SIGKILL'); }
      }, config.shutdownTimeoutMs);
      await Promise.all(exits);
      clearTimeout(timer);
      await http?.close();
      log.info('stopped');
    })();
    return closing;
  }


  /**
   * SIGHUP: re-read the config file. Backends, weights, timeouts, handler options and balancer settings change
   * in place (established flows keep their backend unless it was removed); an invalid file is rejected and the
   * running config stays. Settings that need a restart are reported and left as they are.
   */
  async function reload(): Promise<void> {
    let next: FlowlbConfig;
    try {
      // From the config built at start: it carries the command-line flags (which win over the file on every
      // reload); `config` is a merged copy after the first reload and would lose them.
      next = await reloadConfig(initialConfig);
      // The handler checks its options and backends as it did at start (e.g. the proxy's maxFails), before
      // any worker is told: a value it refuses rejects the whole reload instead of failing in every worker.
      const probe = await instantiateHandler(factory, {
        workerId: -1, workers: config.workers, buckets: config.buckets, idleTimeoutMs: next.idleTimeoutMs,
        backends: next.backends, options: next.handlerOptions,
      });
      await closeCheckedHandler(probe, config.handler);
    } catch (err) {
      log.error('config reload rejected; the running config stays in force', { error: err instanceof Error ? err.message : String(err) });
      reloadsRejected++;
      lastReloadOk = false;
      return;
    }
    const kept = RESTART_ONLY.filter((k) => JSON.stringify(next[k]) !== JSON.stringify(config[k]));
    if (kept.length > 0) log.warn('config reload: these settings need a restart and were not changed', { fields: kept });
    restartNeeded = kept;
    const merged = { ...next } as Record<string, unknown>;
    for (const k of RESTART_ONLY) merged[k] = config[k];
    config = Object.freeze(merged) as unknown as FlowlbConfig;
    configJson = JSON.stringify(config);
    balancer.reconfigure(config);
    migrator.timeoutMs = config.balancer.migrationTimeoutMs;
    dispatcher.setLimits(config.channelLimitBytes, config.balancer.holdLimit);
    for (let lane = 0; lane < config.workers; lane++) {
      sendTo(lane, { t: 'reconfigure', config: { backends: config.backends, idleTimeoutMs: config.idleTimeoutMs, options: config.handlerOptions, queue: config.queue } });
    }
    reloads++;
    lastReloadOk = true;
    log.info('config reloaded', { backends: config.backends.length, file: config.configFile });
  }
  process.on('SIGHUP', () => { void reload(); });

  return { udp, http: httpEndpoint, close };
}

