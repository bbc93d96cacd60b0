/**
 * The benchmark scripts' command lines as a user meets them: spawns the built scripts (`npm test` builds first)
 * and checks that `--help` prints the options and exits 0, and that an unknown option or a bad value exits
 * non-zero with exactly one stderr line naming it. Nothing here may start a benchmark: every case must exit
 * within a few seconds, and one that does not is killed (with its process group) and fails.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { beforeAll, describe, expect, it } from 'vitest';

const BENCH = fileURLToPath(new URL('../dist/bench/', import.meta.url));
const REPO = fileURLToPath(new URL('..', import.meta.url));
/** A script that fails on its arguments (or prints its help) exits well within this; later means it started. */
const EXIT_DEADLINE_MS = 10_000;

/** Every user-facing benchmark, with one option its --help must list. */
const SCRIPTS: Record<string, string> = {
  'backend-failover': '--interval-ms',
  channel: '--count',
  'cpu-per-query': '--clients',
  echo: '--rtt-rate',
  fairness: '--heavy-x',
  'flow-scaling': '--native-flows',
  interference: '--no-static',
  'migration-storm': '--period-ms',
  peers: '--latency-rate',
  'primary-cost': '--pin',
  'reply-path': '--rounds',
  'run-all': '--help',
  sip: '--via',
  skew: '--cap-period-us',
  'worker-flows': '--repeat',
};

interface RunResult { code: number | null; signal: NodeJS.Signals | null; stdout: string; stderr: string; ms: number }

function run(script: string, ...args: string[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    // Its own process group, so a script that started a benchmark is killed with everything it spawned.
    const child = spawn(process.execPath, [`${BENCH}${script}.js`, ...args], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => {
      try { process.kill(-child.pid!, 'SIGKILL'); } catch { /* gone */ }
      reject(new Error(`${script} ${args.join(' ')} did not exit within ${EXIT_DEADLINE_MS} ms (it started a benchmark?); stdout: ${stdout}`));
    }, EXIT_DEADLINE_MS);
    child.on('error', reject);
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}

/** Exit 2 with exactly one stderr line, `SCRIPT: ...`, containing `names`; no stack trace, no usage dump. */
function expectOneLineError(r: RunResult, script: string, ...names: string[]): void {
  expect(r.signal).toBeNull();
  expect(r.code).toBe(2);
  const lines = r.stderr.split('\n').filter((l) => l.trim() !== '');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]!.startsWith(`${script}: `), lines[0]).toBe(true);
  for (const n of names) expect(lines[0]).toContain(n);
  expect(r.stderr).not.toMatch(/\n\s+at |Usage:/);
  expect(r.stdout).toBe('');
}

beforeAll(() => {
  for (const s of Object.keys(SCRIPTS)) if (!existsSync(`${BENCH}${s}.js`)) throw new Error(`${BENCH}${s}.js is missing: build first (npx tsc -p .)`);
});

describe.concurrent('bench scripts: --help', () => {
  for (const [script, option] of Object.entries(SCRIPTS)) {
    it(`${script} --help prints its options and exits 0`, async () => {
      const r = await run(script, '--help');
      expect(r.code, r.stderr).toBe(0);
      expect(r.stderr).toBe('');
      expect(r.stdout).toContain(`node dist/bench/${script}.js`);
      expect(r.stdout).toContain(option);
    });
  }
});

describe.concurrent('bench scripts: bad command lines', () => {
  for (const script of Object.keys(SCRIPTS)) {
    it(`${script} --no-such-flag: one line naming it`, async () => {
      expectOneLineError(await run(script, '--no-such-flag'), script, 'unknown option --no-such-flag');
    });
  }

  const cases: [string, string[], string[]][] = [
    ['skew', ['--rounds', 'x'], ['--rounds', '"x"']],
    ['skew', ['--round', '2'], ['unknown option --round ']],
    ['skew', ['--load', '0.9x'], ['--load', '"0.9x"']],
    ['skew', ['--arrivals', 'burst'], ['--arrivals', 'poisson, paced']],
    ['interference', ['--rounds', '0'], ['--rounds', 'integer >= 1', '"0"']],
    ['interference', ['--short', '14'], ['unexpected argument 14']],
    ['worker-flows', ['--flows', '1000,lots'], ['--flows', '"1000,lots"']],
    ['channel', ['--count'], ['--count needs a value']],
    ['sip', ['--via', 'carrier-pigeon'], ['--via', 'flowlb, nginx']],
    ['fairness', ['--cost-us', '-5'], ['--cost-us', '"-5"']],
    ['migration-storm', ['--concurrency', '65'], ['--concurrency', 'at most 64']],
    ['run-all', ['skwe'], ['unknown benchmark skwe']],
    ['backend-failover', ['--flows', '10', '--flows=20'], ['--flows is given more than once']],
  ];
  for (const [script, args, names] of cases) {
    it(`${script} ${args.join(' ')}: one line naming the problem`, async () => {
      expectOneLineError(await run(script, ...args), script, ...names);
    });
  }

  // The extra flowlb flags of --compare / --adaptive-args start with '-' and are one value, not options.
  it('skew --compare "--queue-limit 64" is a value (only the bad option is reported)', async () => {
    expectOneLineError(await run('skew', '--compare', '--queue-limit 64', '--adaptive-args', '--queue-limit 32', '--no-such-flag'), 'skew', 'unknown option --no-such-flag (');
  });
});
