import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import {
  DEFAULT_BUCKETS,
  DEFAULT_DEAD_BAND,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_QUEUE_LIMIT,
  defaultConfig,
  defaultWorkers,
  formatDuration,
  parseBackend,
  parseDuration,
  parseEndpoint,
  reloadConfig,
  resolveConfig,
  validateConfigObject,
  type FlowlbConfig,
  type ServeFlags,
} from '../src/config.js';
import { ConfigError } from '../src/errors.js';

const tmp = mkdtempSync(path.join(os.tmpdir(), 'flowlb-config-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let fileCount = 0;
function writeConfig(content: unknown): string {
  const file = path.join(tmp, `config-${fileCount++}.json`);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
}

/** Checks that `err` is a one-line ConfigError and returns it. */
function expectConfigError(err: unknown): ConfigError {
  expect(err).toBeInstanceOf(ConfigError);
  expect((err as ConfigError).code).toBe('ERR_CONFIG');
  expect((err as ConfigError).message).not.toContain('\n');
  return err as ConfigError;
}

/** Runs `fn` and returns the ConfigError it throws; fails the test if it throws anything else or nothing. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    return expectConfigError(err);
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

async function asyncConfigError(promise: Promise<unknown>): Promise<ConfigError> {
  try {
    await promise;
  } catch (err) {
    return expectConfigError(err);
  }
  throw new Error('expected a ConfigError, the promise resolved');
}

function isDeepFrozen(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return true;
  return Object.isFrozen(value) && Object.values(value).every(isDeepFrozen);
}

describe('parseEndpoint', () => {
  it.each([
    ['127.0.0.1:5300', { host: '127.0.0.1', port: 5300, family: 4 }],
    ['0.0.0.0:0', { host: '0.0.0.0', port: 0, family: 4 }],
    ['localhost:53', { host: '127.0.0.1', port: 53, family: 4 }],
    ['LOCALHOST:53', { host: '127.0.0.1', port: 53, family: 4 }],
    ['[::1]:5300', { host: '::1', port: 5300, family: 6 }],
    ['[::]:65535', { host: '::', port: 65535, family: 6 }],
    [' 10.0.0.1:80 ', { host: '10.0.0.1', port: 80, family: 4 }],
  ])('parses %s', (text, expected) => {
    expect(parseEndpoint(text, '--listen')).toEqual(expected);
  });

  it.each([
    ['127.0.0.1', 'HOST:PORT'],
    ['', 'HOST:PORT'],
    ['::1:5300', 'brackets'],
    ['example.com:53', 'names are not resolved'],
    ['1.2.3:53', 'IPv4'],
    ['127.0.0.1:', 'port'],
    ['127.0.0.1:65536', 'port'],
    ['127.0.0.1:-1', 'port'],
    ['127.0.0.1:80x', 'port'],
    ['127.0.0.1:1e3', 'port'],
    ['[::1]5300', '[IPv6]:PORT'],
    ['[::1:5300', '[IPv6]:PORT'],
    ['[1.2.3.4]:53', 'IPv6'],
  ])('rejects %j naming the field and the problem', (text, problem) => {
    const err = configError(() => parseEndpoint(text, '--listen'));
    expect(err.message).toMatch(/^--listen /);
    expect(err.message).toContain(problem);
  });

  it('allows port 0 only where asked to', () => {
    expect(parseEndpoint('127.0.0.1:0', '--http').port).toBe(0);
    expect(configError(() => parseEndpoint('127.0.0.1:0', 'x', 1)).message).toContain('between 1 and 65535');
  });
});

describe('parseBackend', () => {
  it.each([
    ['127.0.0.1:7001', { host: '127.0.0.1', port: 7001, family: 4, weight: 1 }],
    ['127.0.0.1:7001@3', { host: '127.0.0.1', port: 7001, family: 4, weight: 3 }],
    ['[::1]:7001@1000', { host: '::1', port: 7001, family: 6, weight: 1000 }],
    ['localhost:9@1', { host: '127.0.0.1', port: 9, family: 4, weight: 1 }],
  ])('parses %s', (text, expected) => {
    expect(parseBackend(text)).toEqual(expected);
  });

  it.each([
    ['127.0.0.1:7001@0', 'weight'],
    ['127.0.0.1:7001@1001', 'weight'],
    ['127.0.0.1:7001@x', 'weight'],
    ['127.0.0.1:7001@', 'weight'],
    ['127.0.0.1:7001@1.5', 'weight'],
    ['127.0.0.1:0', 'port'],
    ['0.0.0.0:7001', 'unspecified'],
    ['[::]:7001', 'unspecified'],
    ['backend.local:7001', 'names are not resolved'],
  ])('rejects %j', (text, problem) => {
    const err = configError(() => parseBackend(text));
    expect(err.message).toMatch(/^--backend /);
    expect(err.message).toContain(problem);
  });
});

describe('parseDuration', () => {
  it.each([
    ['500ms', 500],
    ['60s', 60_000],
    ['5m', 300_000],
    ['1h', 3_600_000],
    ['5d', 432_000_000], // the error message's "at most 24d" named a unit it did not take
    ['1.5s', 1500],
    ['250', 250],
    [1500, 1500],
  ] as const)('parses %j', (value, ms) => {
    expect(parseDuration(value, '--idle-timeout')).toBe(ms);
  });

  it.each(['0', '0s', '-5s', '25d', 'abc', '', 's', '1 hour', '10000h'])('rejects %j', (text) => {
    expect(configError(() => parseDuration(text, '--idle-timeout')).message).toMatch(/^--idle-timeout must be a positive duration/);
  });

  it.each([0, -1, NaN, Infinity, 0.4])('rejects the number %d', (value) => {
    configError(() => parseDuration(value, 'idleTimeoutMs'));
  });

  it('formats durations back to their shortest exact form', () => {
    expect(formatDuration(DEFAULT_IDLE_TIMEOUT_MS)).toBe('60s');
    expect(formatDuration(3_600_000)).toBe('1h');
    expect(formatDuration(300_000)).toBe('5m');
    expect(formatDuration(86_400_000)).toBe('1d'); // what was given as 1d reads 1d in errors, not 24h
    expect(formatDuration(90_000_000)).toBe('25h');
    expect(formatDuration(200)).toBe('200ms');
    for (const ms of [1, 200, 1500, 60_000, 300_000, 3_600_000]) expect(parseDuration(formatDuration(ms), 'x')).toBe(ms);
  });
});

describe('resolveConfig: defaults and flags', () => {
  it('gives the defaults, deeply frozen', async () => {
    const config = await resolveConfig({});
    expect(config).toEqual(defaultConfig());
    expect(config.listen).toEqual([{ host: '127.0.0.1', port: 5300, family: 4 }]);
    expect(config.http).toEqual({ host: '127.0.0.1', port: 9464, family: 4 });
    expect(config.workers).toBe(defaultWorkers());
    expect(config.buckets).toBe(DEFAULT_BUCKETS);
    expect(config.handler).toBe('echo');
    expect(config.idleTimeoutMs).toBe(DEFAULT_IDLE_TIMEOUT_MS);
    expect(config.stallTimeoutMs).toBe(10_000);
    expect(config.balancer.enabled).toBe(true);
    expect(config.balancer.deadBand).toBe(DEFAULT_DEAD_BAND);
    expect(config.configFile).toBeNull();
    expect(isDeepFrozen(config)).toBe(true);
  });

  it('applies every flag as yargs hands them over', async () => {
    const config = await resolveConfig({
      listen: ['127.0.0.1:0', '[::1]:5301'],
      workers: '3',
      buckets: '256',
      handler: 'proxy',
      backend: ['127.0.0.1:7001@2', '127.0.0.1:7002'],
      idleTimeout: '90s',
      http: 'off',
      maxFlows: '1000',
      mode: 'packet',
      balance: false,
      queueLimit: '100',
      reportInterval: '100ms',
      rebalanceInterval: '1s',
      logLevel: 'debug',
    });
    expect(config.listen).toEqual([
      { host: '127.0.0.1', port: 0, family: 4 },
      { host: '::1', port: 5301, family: 6 },
    ]);
    expect(config.workers).toBe(3);
    expect(config.buckets).toBe(256);
    expect(config.handler).toBe('proxy');
    expect(config.backends.map((b) => [b.port, b.weight])).toEqual([
      [7001, 2],
      [7002, 1],
    ]);
    expect(config.idleTimeoutMs).toBe(90_000);
    expect(config.http).toBeNull();
    expect(config.maxFlowsPerWorker).toBe(1000);
    expect(config.balancer).toMatchObject({
      enabled: false,
      mode: 'packet',
      queueLimit: 100,
      reportIntervalMs: 100,
      rebalanceIntervalMs: 1000,
    });
    expect(config.logLevel).toBe('debug');
  });

  it('lets a repeated single-valued flag keep its last value', async () => {
    expect((await resolveConfig({ workers: ['2', '1'] })).workers).toBe(1);
  });

  it.each(['off', 'none', 'false', 'OFF', false])('turns --http %j into null', async (http) => {
    expect((await resolveConfig({ http })).http).toBeNull();
  });

  it('resolves a handler path against the working directory', async () => {
    const dir = path.join(tmp, 'handlers');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'mine.js'), 'export default {}');
    const config = await resolveConfig({ handler: './handlers/mine.js' }, tmp);
    expect(config.handler).toBe(path.join(dir, 'mine.js'));
  });

  it.each<[string, ServeFlags, string]>([
    ['buckets not a power of two', { buckets: '1000' }, '--buckets must be a power of two between 1 and 65536, got 1000'],
    ['buckets too large', { buckets: '131072' }, '--buckets must be a power of two between 1 and 65536, got 131072'],
    ['buckets zero', { buckets: '0' }, '--buckets must be a power of two'],
    ['buckets text', { buckets: 'many' }, '--buckets must be a power of two between 1 and 65536, got "many"'],
    ['workers zero', { workers: '0' }, '--workers must be an integer between 1 and 256, got 0'],
    ['workers too many', { workers: '257' }, '--workers must be an integer between 1 and 256, got 257'],
    ['workers fractional', { workers: '1.5' }, '--workers must be an integer'],
    ['workers text', { workers: 'abc' }, '--workers must be an integer between 1 and 256, got "abc"'],
    ['fewer buckets than workers', { workers: '4', buckets: '2' }, 'buckets (2) must be at least the number of workers (4)'],
    ['listen malformed', { listen: ['nonsense'] }, '--listen must be HOST:PORT'],
    ['listen bad port', { listen: ['127.0.0.1:70000'] }, '--listen port must be an integer between 0 and 65535, got 70000'],
    ['listen twice', { listen: ['127.0.0.1:5300', '127.0.0.1:5300'] }, '--listen 127.0.0.1:5300 is given twice'],
    ['backend bad weight', { backend: ['127.0.0.1:7001@0'] }, '--backend weight must be an integer between 1 and 1000'],
    ['backend twice', { backend: ['127.0.0.1:7001', '127.0.0.1:7001@2'] }, '--backend 127.0.0.1:7001 is given twice'],
    ['IPv6 backend twice in two spellings', { backend: ['[::1]:7001', '[0:0:0:0:0:0:0:1]:7001'] }, '--backend [::1]:7001 is given twice'],
    ['IPv6 listener twice in two spellings', { listen: ['[::1]:7001', '[0::1]:7001'] }, '--listen [::1]:7001 is given twice'],
    ['proxy without backends', { handler: 'proxy' }, '--handler proxy needs at least one backend'],
    ['handler file missing', { handler: './no-such-handler.js' }, '--handler "./no-such-handler.js": no such file'],
    ['handler is a directory', { handler: '.' }, 'is not a file'],
    ['handler empty', { handler: '' }, '--handler must be echo, proxy, sockperf or the path of a handler module'],
    ['idle timeout', { idleTimeout: 'soon' }, '--idle-timeout must be a positive duration'],
    ['idle timeout zero', { idleTimeout: '0' }, '--idle-timeout must be a positive duration'],
    ['report interval', { reportInterval: '-1s' }, '--report-interval must be a positive duration'],
    ['rebalance interval', { rebalanceInterval: 'soon' }, '--rebalance-interval must be a positive duration'],
    ['report interval beyond a third of stallTimeout', { reportInterval: '12s' }, 'reportInterval (12s, --report-interval) must be at most 1/3 of stallTimeout (10s)'],
    ['http malformed', { http: 'yes' }, '--http must be HOST:PORT'],
    ['max flows', { maxFlows: '0' }, '--max-flows must be an integer between 1 and 16777216, got 0'],
    ['max flows too many to preallocate', { maxFlows: '100000000' }, '--max-flows must be an integer between 1 and 16777216, got 100000000'],
    ['queue limit', { queueLimit: '-5' }, '--queue-limit must be a positive integer, got -5'],
    ['mode', { mode: 'bucket' }, '--mode must be one of flow, packet, got "bucket"'],
    ['log level', { logLevel: 'loud' }, '--log-level must be one of debug, info, warn, error, got "loud"'],
    ['balance', { balance: 'maybe' }, '--balance must be true or false'],
    ['config empty', { config: '' }, '--config must be a file path'],
  ])('rejects %s', async (_name, flags, message) => {
    const err = await asyncConfigError(resolveConfig(flags, tmp));
    expect(err.message).toContain(message);
  });
});

describe('resolveConfig: config file', () => {
  it('resolves a relative handler path in a config file from the file\'s directory, and a --handler flag from cwd', async () => {
    const dir = path.join(tmp, 'etc-flowlb');
    mkdirSync(dir, { recursive: true });
    writeFileSync(path.join(dir, 'next-to-config.js'), 'export default {}');
    const file = path.join(dir, 'flowlb.json');
    writeFileSync(file, JSON.stringify({ handler: './next-to-config.js' }));
    // Run from elsewhere (a service manager's working directory): the file's own directory counts.
    expect((await resolveConfig({ config: file }, os.tmpdir())).handler).toBe(path.join(dir, 'next-to-config.js'));
    writeFileSync(path.join(tmp, 'in-cwd.js'), 'export default {}');
    expect((await resolveConfig({ config: file, handler: './in-cwd.js' }, tmp)).handler).toBe(path.join(tmp, 'in-cwd.js'));
  });

  it('reads a file saved with a UTF-8 byte order mark', async () => {
    const file = writeConfig('\ufeff' + JSON.stringify({ workers: 3 }));
    expect((await resolveConfig({ config: file }, tmp)).workers).toBe(3);
  });

  it('names a duration of the wrong JSON type as the file has it, not as NaN', async () => {
    const file = writeConfig({ idleTimeout: true, balancer: {} });
    expect((await asyncConfigError(resolveConfig({ config: file }, tmp))).message).toBe(
      `config file ${file}: idleTimeout must be a positive duration such as 500ms, 60s, 5m or 1h (at most 24d), got true`,
    );
    const other = writeConfig({ balancer: { migrationTimeout: null } });
    expect((await asyncConfigError(resolveConfig({ config: other }, tmp))).message).toMatch(/balancer\.migrationTimeout must be .* got null$/);
  });

  it('reads every field in its human forms, and flags override the file', async () => {
    const handlerFile = path.join(tmp, 'file-handler.js');
    writeFileSync(handlerFile, 'export default {}');
    const file = writeConfig({
      listen: ['127.0.0.1:6000', { host: '::1', port: 6001 }],
      workers: 2,
      buckets: 64,
      handler: handlerFile,
      handlerOptions: { greeting: 'hi', nested: { n: [1, 2] } },
      backends: ['127.0.0.1:7001@3', { host: '::1', port: 7002, weight: 2 }, { host: '127.0.0.1', port: 7003 }],
      idleTimeout: '90s',
      http: 'localhost:9191',
      maxFlowsPerWorker: 5000,
      channelLimitBytes: 1_000_000,
      shutdownTimeoutMs: 1000,
      stallTimeout: 'off',
      balancer: {
        enabled: false,
        mode: 'packet',
        reportInterval: '100ms',
        rebalanceIntervalMs: 750,
        deadBand: 0.1,
        minBusy: 0.25,
        maxMovesPerRound: 4,
        queueLimit: 500,
        holdLimit: 600,
        migrationTimeout: '3s',
      },
      queue: { quantumBytes: 9000, flowQueueLimit: 64 },
      logLevel: 'warn',
    });
    const config = await resolveConfig({ config: file });
    expect(config.configFile).toBe(file);
    expect(config.listen).toEqual([
      { host: '127.0.0.1', port: 6000, family: 4 },
      { host: '::1', port: 6001, family: 6 },
    ]);
    expect(config.workers).toBe(2);
    expect(config.buckets).toBe(64);
    expect(config.handler).toBe(handlerFile);
    expect(config.handlerOptions).toEqual({ greeting: 'hi', nested: { n: [1, 2] } });
    expect(config.backends).toEqual([
      { host: '127.0.0.1', port: 7001, family: 4, weight: 3 },
      { host: '::1', port: 7002, family: 6, weight: 2 },
      { host: '127.0.0.1', port: 7003, family: 4, weight: 1 },
    ]);
    expect(config.idleTimeoutMs).toBe(90_000);
    expect(config.http).toEqual({ host: '127.0.0.1', port: 9191, family: 4 });
    expect(config.maxFlowsPerWorker).toBe(5000);
    expect(config.channelLimitBytes).toBe(1_000_000);
    expect(config.shutdownTimeoutMs).toBe(1000);
    expect(config.stallTimeoutMs).toBe(0);
    expect(config.balancer).toEqual({
      enabled: false,
      mode: 'packet',
      reportIntervalMs: 100,
      rebalanceIntervalMs: 750,
      deadBand: 0.1,
      minBusy: 0.25,
      maxMovesPerRound: 4,
      queueLimit: 500,
      holdLimit: 600,
      migrationTimeoutMs: 3000,
    });
    expect(config.queue).toEqual({ quantumBytes: 9000, flowQueueLimit: 64 });
    expect(config.logLevel).toBe('warn');
    expect(isDeepFrozen(config)).toBe(true);

    const overridden = await resolveConfig({ config: file, workers: '1', backend: ['127.0.0.1:8000'], balance: true });
    expect(overridden.workers).toBe(1);
    expect(overridden.backends).toEqual([{ host: '127.0.0.1', port: 8000, family: 4, weight: 1 }]);
    expect(overridden.balancer.enabled).toBe(true);
    expect(overridden.balancer.deadBand).toBe(0.1);
  });

  it('accepts a single listen string, idleTimeoutMs and http false', async () => {
    const file = writeConfig({ listen: '127.0.0.1:6000', idleTimeoutMs: 1234, http: false });
    const config = await resolveConfig({ config: file });
    expect(config.listen).toEqual([{ host: '127.0.0.1', port: 6000, family: 4 }]);
    expect(config.idleTimeoutMs).toBe(1234);
    expect(config.http).toBeNull();
  });

  it('resolves the file name against the working directory', async () => {
    const file = writeConfig({ workers: 1 });
    const config = await resolveConfig({ config: path.basename(file) }, tmp);
    expect(config.configFile).toBe(file);
  });

  it('gives the exact message for a bad nested field', async () => {
    const file = writeConfig({ balancer: { deadBand: 'a' } });
    const err = await asyncConfigError(resolveConfig({ config: file }));
    expect(err.message).toBe(`config file ${file}: balancer.deadBand must be a number between 0 and 1, got "a"`);
  });

  it.each<[string, unknown, string]>([
    ['unknown field', { wrokers: 2 }, 'unknown field wrokers'],
    ['unknown balancer field', { balancer: { deadband: 0.1 } }, 'unknown field balancer.deadband'],
    ['unknown queue field', { queue: { quantum: 1 } }, 'unknown field queue.quantum'],
    ['unknown backend field', { backends: [{ host: '127.0.0.1', port: 1, wieght: 2 }] }, 'unknown field backends[0].wieght'],
    ['configFile is not settable', { configFile: '/x' }, 'unknown field configFile'],
    ['not an object', [1, 2], 'must be a JSON object'],
    ['balancer not an object', { balancer: 3 }, 'balancer must be a JSON object, got 3'],
    ['workers as text', { workers: 'two' }, 'workers must be an integer between 1 and 256, got "two"'],
    ['buckets', { buckets: 1000 }, 'buckets must be a power of two between 1 and 65536, got 1000'],
    ['deadBand one', { balancer: { deadBand: 1 } }, 'balancer.deadBand must be a number between 0 and 1, got 1'],
    ['deadBand negative', { balancer: { deadBand: -0.1 } }, 'balancer.deadBand must be a number between 0 and 1'],
    ['minBusy one', { balancer: { minBusy: 1 } }, 'balancer.minBusy must be a number between 0 and 1, got 1'],
    ['mode', { balancer: { mode: 'random' } }, 'balancer.mode must be one of flow, packet, got "random"'],
    ['enabled', { balancer: { enabled: 'yes' } }, 'balancer.enabled must be true or false, got "yes"'],
    ['maxMovesPerRound', { balancer: { maxMovesPerRound: 0 } }, 'balancer.maxMovesPerRound must be a positive integer'],
    ['holdLimit', { balancer: { holdLimit: 1.5 } }, 'balancer.holdLimit must be a positive integer'],
    ['migrationTimeout', { balancer: { migrationTimeout: 'later' } }, 'balancer.migrationTimeout must be a positive duration'],
    ['quantumBytes', { queue: { quantumBytes: 0 } }, 'queue.quantumBytes must be a positive integer'],
    ['flowQueueLimit', { queue: { flowQueueLimit: null } }, 'queue.flowQueueLimit must be a positive integer, got null'],
    ['listen element', { listen: ['127.0.0.1:1', 'bad'] }, 'listen[1] must be HOST:PORT'],
    ['listen empty', { listen: [] }, 'listen must give at least one address'],
    ['listen object port', { listen: [{ host: '127.0.0.1', port: '80' }] }, 'listen[0].port must be an integer'],
    ['listen object host', { listen: [{ host: 5, port: 80 }] }, 'listen[0].host must be an IP address string'],
    ['backend element', { backends: ['127.0.0.1:7001@-1'] }, 'backends[0] weight must be an integer between 1 and 1000'],
    ['backend object weight', { backends: [{ host: '127.0.0.1', port: 7001, weight: 0 }] }, 'backends[0] weight must be'],
    ['backend object port 0', { backends: [{ host: '127.0.0.1', port: 0 }] }, 'backends[0] port must be an integer between 1'],
    ['idleTimeout', { idleTimeout: '0s' }, 'idleTimeout must be a positive duration'],
    ['idleTimeoutMs', { idleTimeoutMs: -1 }, 'idleTimeoutMs must be a positive duration'],
    ['both idle forms', { idleTimeout: '1s', idleTimeoutMs: 1000 }, 'idleTimeout and idleTimeoutMs are both given'],
    ['both interval forms', { balancer: { reportInterval: '1s', reportIntervalMs: 5 } }, 'balancer.reportInterval and balancer.reportIntervalMs'],
    ['http', { http: 9090 }, 'http must be HOST:PORT or off, got 9090'],
    ['handler type', { handler: 42 }, 'handler must be echo, proxy, sockperf or the path of a handler module, got 42'],
    ['handler file', { handler: '/no/such/handler.js' }, 'handler "/no/such/handler.js": no such file'],
    ['handlerOptions', { handlerOptions: [] }, 'handlerOptions must be an object'],
    ['channelLimitBytes', { channelLimitBytes: 1000 }, 'channelLimitBytes must be an integer between 65507'],
    ['shutdownTimeout', { shutdownTimeout: 'x' }, 'shutdownTimeout must be a positive duration'],
    ['stallTimeout', { stallTimeout: 'never' }, 'stallTimeout must be a positive duration'],
    ['logLevel', { logLevel: 'verbose' }, 'logLevel must be one of debug, info, warn, error'],
    ['proxy without backends', { handler: 'proxy' }, 'handler proxy needs at least one backend'],
  ])('rejects %s, naming the file and the field', async (_name, content, message) => {
    const file = writeConfig(content);
    const err = await asyncConfigError(resolveConfig({ config: file }));
    expect(err.message).toContain(message);
    expect(err.message).toContain(file);
  });

  it('reports bad JSON with the file, line and column', async () => {
    const file = writeConfig('{\n  "workers": 2,\n}\n');
    const err = await asyncConfigError(resolveConfig({ config: file }));
    expect(err.message).toMatch(new RegExp(`^config file ${file}: invalid JSON: .* \\(line 3 column 1\\)$`));
  });

  it('reports a missing file', async () => {
    const file = path.join(tmp, 'missing.json');
    expect((await asyncConfigError(resolveConfig({ config: file }))).message).toBe(`config file ${file}: not found`);
  });

  it('reports a directory given as the file', async () => {
    expect((await asyncConfigError(resolveConfig({ config: tmp }))).message).toBe(`config file ${tmp}: is a directory`);
  });
});

describe('validateConfigObject', () => {
  it('builds a frozen config from an object over the defaults', () => {
    const config = validateConfigObject({ buckets: 128, balancer: { queueLimit: 10 } }, 'reload');
    expect(config.buckets).toBe(128);
    expect(config.balancer.queueLimit).toBe(10);
    expect(config.balancer.holdLimit).toBe(defaultConfig().balancer.holdLimit);
    expect(config.configFile).toBeNull();
    expect(isDeepFrozen(config)).toBe(true);
    expect(validateConfigObject({}, '').balancer.queueLimit).toBe(DEFAULT_QUEUE_LIMIT);
  });

  it('prefixes messages with the source, also for whole-config checks', () => {
    expect(configError(() => validateConfigObject({ queue: { x: 1 } }, 'config file /x.json')).message).toBe(
      'config file /x.json: unknown field queue.x (known: quantumBytes, flowQueueLimit)',
    );
    expect(configError(() => validateConfigObject({ handler: 'proxy' }, 'config file /x.json')).message).toMatch(
      /^config file \/x\.json: handler proxy needs at least one backend/,
    );
    expect(configError(() => validateConfigObject({ workers: 8, buckets: 4 }, 'config file /x.json')).message).toMatch(
      /^config file \/x\.json: buckets \(4\) must be at least the number of workers \(8\)/,
    );
    expect(configError(() => validateConfigObject({ stallTimeout: '2s', balancer: { reportInterval: '1s' } }, 'config file /x.json')).message).toMatch(
      /^config file \/x\.json: reportInterval \(1s, --report-interval\) must be at most 1\/3 of stallTimeout \(2s\)/,
    );
    // "off" disables the watchdog, and with it the limit.
    expect(validateConfigObject({ stallTimeout: 'off', balancer: { reportInterval: '1h' } }, '').balancer.reportIntervalMs).toBe(3_600_000);
    expect(configError(() => validateConfigObject(null, '')).message).toBe('config must be a JSON object, got null');
  });

  it('does not share handlerOptions with the caller', () => {
    const options = { a: { b: 1 } };
    const config = validateConfigObject({ handlerOptions: options }, '');
    options.a.b = 2;
    expect(config.handlerOptions).toEqual({ a: { b: 1 } });
  });
});

describe('reloadConfig', () => {
  it('re-reads the file and applies the start flags again', async () => {
    const file = writeConfig({ buckets: 64, balancer: { deadBand: 0.1 } });
    const first: FlowlbConfig = await resolveConfig({ config: file, buckets: '128' });
    writeFileSync(file, JSON.stringify({ buckets: 32, balancer: { deadBand: 0.2 } }));
    const second = await reloadConfig(first);
    expect(second.buckets).toBe(128);
    expect(second.balancer.deadBand).toBe(0.2);
    expect(second.configFile).toBe(file);
  });

  it('keeps the error for a broken file and refuses without a file', async () => {
    const file = writeConfig({ workers: 1 });
    const first = await resolveConfig({ config: file });
    writeFileSync(file, '{"workers": 0}');
    expect((await asyncConfigError(reloadConfig(first))).message).toContain('workers must be an integer between 1 and 256, got 0');
    expect((await asyncConfigError(reloadConfig(await resolveConfig({})))).message).toContain('no config file to reload');
  });
});
