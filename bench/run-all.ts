/**
 * `npm run bench`: a short version of every benchmark, one after another (the machine has 2 cores: running
 * them in parallel would measure contention), then a markdown summary of their headline figures in
 * results/summary.md. Each benchmark writes its own results/NAME.json (and charts) as well.
 *
 *   npm run bench                 # everything, short (a few minutes)
 *   node dist/bench/run-all.js skew echo    # only these
 */
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { BenchUsageError, EXIT_USAGE, parseOrThrow } from './lib/args.js';
import { ROOT } from './lib/procs.js';

const ALL = ['channel', 'primary-cost', 'reply-path', 'echo', 'fairness', 'skew', 'interference', 'migration-storm', 'flow-scaling', 'peers', 'cpu-per-query', 'sip'];
/** Benchmarks not in the default list, run only when named. */
const EXTRA = ['worker-flows', 'backend-failover'];
const SHORT_ARGS: Record<string, string[]> = {
  channel: ['--count', '100000'],
  'reply-path': ['--rounds', '1', '--seconds', '2'],
  'primary-cost': ['--trials', '2', '--seconds', '2'],
  echo: ['--rounds', '1', '--trial-ms', '1000'],
  // --native: 1k and 100k active flows from the C generator too (skipped, and said so, without a C compiler).
  'flow-scaling': ['--short', '--native'],
  // No --short of their own: their defaults.
  'worker-flows': [],
  'backend-failover': [],
};
let picked: string[];
try {
  const parsed = parseOrThrow('run-all', `A short version of every benchmark, one after another, then a summary of their headline figures in results/summary.md.\nDefault: ${ALL.join(' ')}.`, {}, process.argv.slice(2), {
    positional: { name: 'names', describe: `benchmarks to run (default: all of the default list); also ${EXTRA.join(', ')}` },
  });
  picked = parsed._;
  const unknown = picked.filter((n) => !ALL.includes(n) && !EXTRA.includes(n));
  if (unknown.length) throw new BenchUsageError(`unknown benchmark${unknown.length > 1 ? 's' : ''} ${unknown.join(', ')} (benchmarks: ${[...ALL, ...EXTRA].join(', ')})`);
} catch (err) {
  if (!(err instanceof BenchUsageError)) throw err;
  process.stderr.write(`run-all: ${err.message}\n`);
  process.exit(EXIT_USAGE);
}
const names = picked.length > 0 ? picked : ALL;

interface Row { name: string; status: string; seconds: number; figures: string }

function headline(value: unknown, prefix = '', out: string[] = [], depth = 0): string[] {
  if (value === null || typeof value !== 'object' || depth > 2) return out;
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (out.length >= 8) break;
    if (typeof v === 'number' && Number.isFinite(v) && /ratio|Us|Pps|pps|qps|p99|p50|lost|reordered|duplicated|perFlow|bytes|moves|imbalance|speedup|target/i.test(k)) {
      out.push(`${prefix}${k}=${Number.isInteger(v) ? v : v.toFixed(3)}`);
    } else if (typeof v === 'object' && v !== null && !Array.isArray(v) && /summary|plain|flowlb|static|adaptive|result/i.test(k)) {
      headline(v, `${prefix}${k}.`, out, depth + 1);
    }
  }
  return out;
}

const rows: Row[] = [];
for (const name of names) {
  const script = path.join(ROOT, 'dist/bench', `${name}.js`);
  if (!fs.existsSync(script)) { rows.push({ name, status: 'missing', seconds: 0, figures: '' }); continue; }
  const args = SHORT_ARGS[name] ?? ['--short'];
  console.log(`\n=== ${name} ${args.join(' ')}`);
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [script, ...args], { stdio: 'inherit', timeout: 10 * 60_000 });
  const seconds = (Date.now() - t0) / 1000;
  let figures = '';
  const json = path.join(ROOT, 'results', `${name}.json`);
  if (fs.existsSync(json) && fs.statSync(json).mtimeMs >= t0) {
    try { figures = headline(JSON.parse(fs.readFileSync(json, 'utf8'))).join(', '); } catch { figures = '(unreadable JSON)'; }
  }
  rows.push({ name, status: r.status === 0 ? 'ok' : r.signal ? `killed (${r.signal})` : `exit ${r.status}`, seconds, figures });
}

const md = [
  `# flowlb benchmark summary (short runs)`,
  ``,
  `Run: ${new Date().toISOString()}, Node ${process.version}, ${(await import('node:os')).cpus().length} CPUs. Short runs are noisy; see each results/NAME.json for the full figures and the README for how to run the long versions.`,
  ``,
  `| benchmark | status | seconds | headline figures |`,
  `|---|---|---|---|`,
  ...rows.map((r) => `| ${r.name} | ${r.status} | ${r.seconds.toFixed(0)} | ${r.figures} |`),
  ``,
].join('\n');
fs.mkdirSync(path.join(ROOT, 'results'), { recursive: true });
fs.writeFileSync(path.join(ROOT, 'results', 'summary.md'), md);
console.log(`\n${md}\nwritten results/summary.md`);
