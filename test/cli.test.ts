/**
 * The `flowlb` command line as a user meets it: spawns the built CLI (`npm test` builds first) and checks
 * exit codes and that every expected failure is exactly one stderr line naming the problem.
 */
import { spawn, spawnSync } from 'node:child_process';
import dgram from 'node:dgram';
import net from 'node:net';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  DEFAULT_BALANCE_MODE,
  DEFAULT_BUCKETS,
  DEFAULT_HANDLER,
  DEFAULT_HTTP,
  DEFAULT_IDLE_TIMEOUT_MS,
  DEFAULT_LISTEN,
  DEFAULT_LOG_LEVEL,
  DEFAULT_MAX_FLOWS_PER_WORKER,
  DEFAULT_QUEUE_LIMIT,
  DEFAULT_REBALANCE_INTERVAL_MS,
  DEFAULT_REPORT_INTERVAL_MS,
  defaultWorkers,
  formatDuration,
} from '../src/config.js';

const CLI = fileURLToPath(new URL('../dist/src/cli.js', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));
/** A CLI that fails on its arguments exits well within this; a hang means it started serving instead. */
const EXIT_DEADLINE_MS = 20_000;

const tmp = mkdtempSync(path.join(os.tmpdir(), 'flowlb-cli-'));

beforeAll(() => {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: build first (npx tsc -p .)`);
});
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(...args: string[]): RunResult {
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO, encoding: 'utf8', timeout: EXIT_DEADLINE_MS });
  return { code: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Spawns without blocking the test's event loop (needed while the test holds a socket open). */
function runAsync(...args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`flowlb ${args.join(' ')} did not exit within ${EXIT_DEADLINE_MS} ms; stderr: ${stderr}`));
    }, EXIT_DEADLINE_MS);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

function isLogRecord(line: string): boolean {
  try {
    const record = JSON.parse(line) as unknown;
    return typeof record === 'object' && record !== null && 'level' in record && 'msg' in record;
  } catch {
    return false;
  }
}

/** The single `flowlb: ...` line of an expected failure (structured log records, if any, are set aside). */
function errorLine(result: RunResult): string {
  const lines = result.stderr.split('\n').filter((line) => line !== '' && !isLogRecord(line));
  expect(lines, `stderr was:\n${result.stderr}`).toHaveLength(1);
  expect(lines[0]).toMatch(/^flowlb: /);
  expect(result.stderr).not.toMatch(/\n\s+at /);
  return lines[0]!;
}

function expectUsageFailure(result: RunResult): string {
  expect(result.code, `stderr was:\n${result.stderr}`).toBe(2);
  expect(result.stdout).toBe('');
  // Config and usage errors happen before anything is logged: the line is all of stderr.
  expect(result.stderr.split('\n').filter(Boolean)).toHaveLength(1);
  return errorLine(result);
}

function writeTemp(name: string, content: string): string {
  const file = path.join(tmp, name);
  writeFileSync(file, content);
  return file;
}

/** Collapses --help's column wrapping so each option's text can be searched as one string. */
function optionHelp(help: string, option: string): string {
  const lines = help.split('\n');
  const start = lines.findIndex((line) => line.trimStart().startsWith(`--${option} `) || line.trim() === `--${option}`);
  expect(start, `--${option} is not in the help:\n${help}`).toBeGreaterThanOrEqual(0);
  const block = [lines[start]!];
  for (let i = start + 1; i < lines.length && !/^\s*-/.test(lines[i]!) && lines[i]!.trim() !== ''; i++) block.push(lines[i]!);
  return block.join(' ').replace(/\s+/g, ' ');
}

describe('flowlb serve --help', () => {
  it('lists every option with its default', () => {
    const result = run('serve', '--help');
    expect(result.code).toBe(0);
    expect(result.stderr).toBe('');
    const expectedDefaults: Record<string, string> = {
      listen: DEFAULT_LISTEN,
      workers: `${defaultWorkers()} (available CPUs)`,
      buckets: String(DEFAULT_BUCKETS),
      handler: DEFAULT_HANDLER,
      backend: 'none',
      'idle-timeout': formatDuration(DEFAULT_IDLE_TIMEOUT_MS),
      config: 'none',
      http: DEFAULT_HTTP,
      'max-flows': String(DEFAULT_MAX_FLOWS_PER_WORKER),
      mode: DEFAULT_BALANCE_MODE,
      balance: 'true',
      'queue-limit': String(DEFAULT_QUEUE_LIMIT),
      'report-interval': formatDuration(DEFAULT_REPORT_INTERVAL_MS),
      'rebalance-interval': formatDuration(DEFAULT_REBALANCE_INTERVAL_MS),
      'log-level': DEFAULT_LOG_LEVEL,
    };
    for (const [option, value] of Object.entries(expectedDefaults)) {
      expect(optionHelp(result.stdout, option)).toContain(`[default: ${value}]`);
    }
    expect(optionHelp(result.stdout, 'balance')).toContain('--no-balance');
  });

  it('lists the commands at the top level', () => {
    const result = run('--help');
    expect(result.code).toBe(0);
    for (const command of ['serve', 'gen', 'backend', 'top']) expect(result.stdout).toMatch(new RegExp(`flowlb ${command}\\b`));
  });
});

describe('flowlb usage and config errors', () => {
  it('rejects an unknown flag by name', () => {
    expect(expectUsageFailure(run('serve', '--frobnicate', '3'))).toMatch(/unknown option --frobnicate\b/);
  });

  it('rejects a missing command', () => {
    expect(expectUsageFailure(run())).toContain('a command is required');
  });

  it('rejects an unknown command', () => {
    expect(expectUsageFailure(run('serv'))).toMatch(/^flowlb: unknown command serv\b/);
  });

  it('names the text of a non-numeric value of a number option (gen, backend, where), not NaN', () => {
    expect(expectUsageFailure(run('gen', '--target', '127.0.0.1:9', '--flows', 'abc'))).toBe('flowlb: --flows must be a number, got "abc"');
    expect(expectUsageFailure(run('backend', '--cost-us=1x'))).toBe('flowlb: --cost-us must be a number, got "1x"');
    expect(expectUsageFailure(run('gen', '--target', '127.0.0.1:9', '--loss-pct', '-1'))).toBe('flowlb: --loss-pct must be a percentage from 0 to below 100, got -1');
    expect(expectUsageFailure(run('backend', '--mode', 'foo'))).toBe('flowlb: --mode must be one of echo, sink, got "foo"');
    expect(expectUsageFailure(run('serve', '--no-balance=true'))).toBe('flowlb: --no-balance takes no value, got --no-balance=true');
    expect(expectUsageFailure(run('backend', '--listen', '127.0.0.1:0', '--sockbuf', '-1'))).toBe('flowlb: --sockbuf must be an integer in [1024, 1073741824] bytes, got -1');
    expect(expectUsageFailure(run('backend', '--listen', '127.0.0.1:0', '--duration', '1', '--stats-file', '/nonexistent/dir/x.json')))
      .toBe('flowlb: --stats-file /nonexistent/dir/x.json: cannot write: ENOENT');
    expect(expectUsageFailure(run('where', '--src', '127.0.0.1:1', '--buckets', 'many'))).toBe('flowlb: --buckets must be a number, got "many"');
  });

  it('names a mistyped command as such when flags follow it', () => {
    // It said "unknown arguments --http, serv", blaming a valid flag.
    expect(expectUsageFailure(run('serv', '--http', 'off', '--workers', '2'))).toBe(
      'flowlb: unknown command serv (commands: serve, gen, backend, top, where)',
    );
  });

  it('rejects an unexpected positional argument', () => {
    expect(expectUsageFailure(run('serve', 'extra'))).toBe('flowlb: unknown argument extra (see flowlb --help)');
  });

  it('rejects a flag without its value', () => {
    expect(expectUsageFailure(run('serve', '--workers'))).toBe('flowlb: --workers needs a value');
  });

  it('rejects a malformed address', () => {
    expect(expectUsageFailure(run('serve', '--listen', 'not-an-address'))).toBe(
      'flowlb: --listen must be HOST:PORT or [IPv6]:PORT, got "not-an-address"',
    );
  });

  it('rejects an IPv6 address without brackets', () => {
    expect(expectUsageFailure(run('serve', '--listen', '::1:5300'))).toContain('--listen IPv6 addresses need brackets');
  });

  it('rejects a bad port', () => {
    expect(expectUsageFailure(run('serve', '--listen', '127.0.0.1:70000'))).toBe(
      'flowlb: --listen port must be an integer between 0 and 65535, got 70000 in "127.0.0.1:70000"',
    );
  });

  it('rejects a --max-flows too large to preallocate before starting any worker', () => {
    // Beyond the cap the workers' typed arrays cannot be allocated: they died at start with a bare V8 message
    // ("Invalid typed array length", "Array buffer allocation failed") over three lines.
    expect(expectUsageFailure(run('serve', '--max-flows', '100000000', '--listen', '127.0.0.1:0', '--http', 'off'))).toBe(
      'flowlb: --max-flows must be an integer between 1 and 16777216, got 100000000',
    );
    const file = writeTemp('max-flows.json', JSON.stringify({ maxFlowsPerWorker: 1_000_000_000 }));
    expect(expectUsageFailure(run('serve', '--config', file, '--listen', '127.0.0.1:0', '--http', 'off'))).toBe(
      `flowlb: config file ${file}: maxFlowsPerWorker must be an integer between 1 and 16777216, got 1000000000`,
    );
  });

  it('gen: rejects a --json file it cannot write before sending, in one line', () => {
    // It used to run the whole send phase, then die with a stack trace (ENOENT from writeFileSync).
    const file = path.join(tmp, 'no-such-dir', 'out.json');
    const started = Date.now();
    const line = expectUsageFailure(run('gen', '--target', '127.0.0.1:9', '--duration', '5', '--quiet', '--json', file));
    expect(line).toBe(`flowlb: --json ${file}: cannot write (ENOENT)`);
    expect(Date.now() - started).toBeLessThan(4000);
  });

  it('backend: rejects a --stats-file it could not replace, before starting, in one line', () => {
    // The file is written as FILE.PID.tmp and renamed over FILE. As root, /proc/version passed the old check (an
    // open for append), then every write failed, counted only as "errors 2" in the summary, and the run exited 0.
    // Checked first: the old check let a device through, and the rename would have replaced it with a file.
    const backend = (file: string): RunResult => run('backend', '--listen', '127.0.0.1:0', '--duration', '1', '--stats-file', file);
    if (existsSync('/proc/version')) {
      // ENOENT as root; a user without root may be told EACCES.
      expect(expectUsageFailure(backend('/proc/version'))).toMatch(
        /^flowlb: --stats-file \/proc\/version: cannot write: cannot create a file in \/proc to replace it with \(E[A-Z]+\)$/,
      );
    }
    expect(expectUsageFailure(backend(tmp))).toBe(`flowlb: --stats-file ${tmp}: not a regular file (a directory): it is replaced on every write`);
  });

  it('backend: names the flag in every option error, not the option field behind it', () => {
    const backend = (...a: string[]): RunResult => run('backend', '--duration', '1', ...a);
    expect(expectUsageFailure(backend('--cost-us', '-1'))).toBe('flowlb: --cost-us must be a number in [0, 1000000] microseconds, got -1');
    expect(expectUsageFailure(backend('--stats-interval', '5'))).toBe('flowlb: --stats-interval must be at least 10 ms, got 5');
    expect(expectUsageFailure(backend('--listen', '1.2.3:5'))).toMatch(/^flowlb: --listen: "1\.2\.3" is not an IP address/);
    expect(expectUsageFailure(backend('--id', ''))).toBe('flowlb: --id must be 1..64 UTF-8 bytes, got 0');
  });

  it('rejects a single-valued flag given twice, naming both values; repeatable ones (--listen, --backend) stay lists', () => {
    expect(expectUsageFailure(run('serve', '--workers', '2', '--workers', '3'))).toBe('flowlb: --workers is given more than once ("2", "3"): give it once');
    expect(expectUsageFailure(run('backend', '--duration', '1', '--duration', '2'))).toBe('flowlb: --duration is given more than once (1, 2): give it once');
    expect(expectUsageFailure(run('gen', '--rate', '5', '--rate=6'))).toBe('flowlb: --rate is given more than once (5, 6): give it once');
    // The same value twice: yargs folds it into one, and it was accepted.
    expect(expectUsageFailure(run('gen', '--procs', '1', '--procs', '1'))).toBe('flowlb: --procs is given more than once: give it once');
    expect(expectUsageFailure(run('serve', '--no-balance', '--no-balance'))).toBe('flowlb: --no-balance is given more than once: give it once');
    expect(expectUsageFailure(run('serve', '--balance', '--no-balance'))).toBe('flowlb: --balance and --no-balance are both given: give one');
    // Two backends are two backends (the offline where answers with one of them).
    const where = run('where', '--src', '1.2.3.4:5', '--dst', '127.0.0.1:5300', '--buckets', '1024', '--backend', '10.0.0.1:1', '--backend', '10.0.0.2:2');
    expect(where.code).toBe(0);
    expect(where.stdout).toMatch(/"backend":"10\.0\.0\.[12]:[12]"/);
  });

  it('rejects buckets that are not a power of two', () => {
    expect(expectUsageFailure(run('serve', '--buckets', '1000'))).toBe(
      'flowlb: --buckets must be a power of two between 1 and 65536, got 1000',
    );
  });

  it('rejects the proxy handler without backends', () => {
    expect(expectUsageFailure(run('serve', '--handler', 'proxy'))).toMatch(/^flowlb: --handler proxy needs at least one backend/);
  });

  it('rejects a handler file that does not exist', () => {
    const line = expectUsageFailure(run('serve', '--handler', './no-such-handler.js'));
    expect(line).toContain('--handler');
    expect(line).toContain(path.join(REPO, 'no-such-handler.js'));
  });

  it('rejects a bad field in the config file', () => {
    const file = writeTemp('bad-field.json', JSON.stringify({ balancer: { deadBand: 'a' } }));
    expect(expectUsageFailure(run('serve', '--config', file))).toBe(
      `flowlb: config file ${file}: balancer.deadBand must be a number between 0 and 1, got "a"`,
    );
  });

  it('rejects an unknown field in the config file', () => {
    const file = writeTemp('unknown-field.json', JSON.stringify({ listen: '127.0.0.1:0', wrokers: 2 }));
    expect(expectUsageFailure(run('serve', '--config', file))).toMatch(
      new RegExp(`^flowlb: config file ${file}: unknown field wrokers `),
    );
  });

  it('rejects a config file that is not JSON', () => {
    const file = writeTemp('bad.json', '{ "workers": 2, }');
    expect(expectUsageFailure(run('serve', '--config', file))).toMatch(new RegExp(`^flowlb: config file ${file}: invalid JSON: `));
  });

  it('rejects a config file that does not exist', () => {
    const file = path.join(tmp, 'absent.json');
    expect(expectUsageFailure(run('serve', '--config', file))).toBe(`flowlb: config file ${file}: not found`);
  });
});

describe('flowlb serve runtime errors', () => {
  it('exits 1 naming the address when the UDP port is in use', async () => {
    const occupier = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      occupier.once('error', reject);
      occupier.bind(0, '127.0.0.1', resolve);
    });
    const { port } = occupier.address();
    try {
      const result = await runAsync(
        'serve',
        '--listen',
        `127.0.0.1:${port}`,
        '--workers',
        '1',
        '--http',
        'off',
        '--log-level',
        'warn',
      );
      expect(result.code, `stderr was:\n${result.stderr}`).toBe(1);
      expect(errorLine(result)).toContain(`127.0.0.1:${port}`);
    } finally {
      occupier.close();
    }
  });

  it('exits 1 with one line and no worker started when the HTTP address is in use', async () => {
    const occupier = net.createServer();
    await new Promise<void>((resolve, reject) => {
      occupier.once('error', reject);
      occupier.listen(0, '127.0.0.1', resolve);
    });
    const { port } = occupier.address() as net.AddressInfo;
    try {
      // The default log level: the status listener used to be bound after the workers, so their "worker ready"
      // records came before the error.
      const result = await runAsync('serve', '--listen', '127.0.0.1:0', '--workers', '2', '--http', `127.0.0.1:${port}`);
      expect(result.code, `stderr was:\n${result.stderr}`).toBe(1);
      expect(result.stderr).toBe(`flowlb: http address 127.0.0.1:${port} is already in use\n`);
      expect(result.stdout).toBe('');
    } finally {
      occupier.close();
    }
  });

  it('exits 2 naming the module when a handler does not implement the interface', async () => {
    const file = writeTemp('not-a-handler.mjs', 'export default { name: "nothing here" };\n');
    const result = await runAsync(
      'serve',
      '--handler',
      file,
      '--listen',
      '127.0.0.1:0',
      '--workers',
      '1',
      '--http',
      'off',
      '--log-level',
      'warn',
    );
    expect(result.code, `stderr was:\n${result.stderr}`).toBe(2);
    expect(errorLine(result)).toContain(file);
  });
});
