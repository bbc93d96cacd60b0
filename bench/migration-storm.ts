/**
 * Migration storm: buckets are moved between the 2 workers over and over (POST /admin/move, a few at once,
 * every few tens of ms, each to the worker that does not own it) while traffic flows. Static hashing
 * (--no-balance), so every move is a forced one, and 64 buckets, so every move carries flows.
 *
 *  A. generator + echo handler: the generator's own accounting of lost, reordered and duplicated replies.
 *  B. seq handler + a dedicated client: each flow sends "1", "2", ... in order; the handler counts the flow's
 *     packets in state that travels with the flow (exportFlow/importFlow) and replies "<worker> <pid> <count>
 *     <payload>". count === payload on every reply means no packet of the flow was lost, duplicated or
 *     reordered on its way to the handler and its state survived every move. The client also counts lost,
 *     reordered and duplicated replies, and how often each flow's worker changed.
 *
 * Migration time: every finished migration's durationMs from /status migrations.recent (polled every 50 ms,
 * deduplicated by epoch), and the flowlb_migration_duration_seconds histogram from /metrics as a cross-check.
 *
 *   node dist/bench/migration-storm.js [--short] [--seconds 20] [--rate 4000] [--flows 128] [--period-ms 40]
 *                                      [--concurrency 4] [--quiet-wait 60]
 * Writes results/migration-storm.json.
 */
import dgram from 'node:dgram';
import path from 'node:path';
import { runGenerator } from '../src/gen/run.js';
import { parseBenchArgs } from './lib/args.js';
import { ROOT, sleep, startFlowlb, writeResult, type Flowlb } from './lib/procs.js';
import { histogramQuantile, parseHistogram, percentile, waitForQuiet } from './lib/sampler.js';


const BUCKETS = 64, WORKERS = 2;
const args = parseBenchArgs('migration-storm', 'Migration storm: buckets moved between 2 workers over and over under traffic; lost, reordered and duplicated packets, migration times.', {
  short: { type: 'boolean', describe: 'Short run: shorter parts, no quiet wait' },
  seconds: { type: 'number', default: 20, short: 8, check: 'positive', describe: 'Length of each part (A and B), s' },
  rate: { type: 'number', default: 4000, check: 'positive', describe: 'Offered rate, packets/s' },
  flows: { type: 'number', default: 128, check: 'positive-int', describe: 'Client flows' },
  'period-ms': { type: 'number', default: 40, check: 'nonnegative', describe: 'Pause between rounds of moves, ms' },
  concurrency: { type: 'number', default: 4, check: 'positive-int', max: BUCKETS, describe: `Buckets moved at once per round (at most ${BUCKETS})` },
  'quiet-wait': { type: 'number', default: 60, short: 0, check: 'nonnegative', describe: 'Wait at most this long for the machine to be idle before each part, s (0: no wait)' },
});
const seconds = args.seconds, rate = args.rate, flows = args.flows;
const periodMs = args['period-ms'], concurrency = args.concurrency;

interface MigrationRecord { bucket: number; from: number; to: number; epoch: number; durationMs: number; flows: number; handedOverBytes: number; held: number; outcome: string }

/** Forced moves until `untilMs` (performance.now()); each targets the worker that does not own the bucket. */
async function storm(lb: Flowlb, untilMs: number): Promise<{ requested: number; started: number; refused: number }> {
  const owner = Array.from({ length: BUCKETS }, (_, b) => b % WORKERS); // initialAssignment: b -> b % workers
  let requested = 0, started = 0, refused = 0;
  let seed = 12345;
  const rnd = (): number => { seed = (Math.imul(seed, 1103515245) + 12345) >>> 0; return seed / 4294967296; };
  while (performance.now() < untilMs) {
    const picks = new Set<number>();
    while (picks.size < concurrency) picks.add(Math.floor(rnd() * BUCKETS));
    await Promise.all([...picks].map(async (b) => {
      const to = (owner[b]! + 1) % WORKERS;
      requested++;
      const r = await fetch(`http://127.0.0.1:${lb.httpPort}/admin/move?bucket=${b}&to=${to}`, { method: 'POST' });
      const body = (await r.json()) as { started: boolean };
      if (body.started) { started++; owner[b] = to; } else refused++;
    }));
    await sleep(periodMs);
  }
  return { requested, started, refused };
}

/** Collects every finished migration from /status (its `recent` keeps only the last 10) until stopped. */
function collectMigrations(lb: Flowlb): { stop(): Promise<MigrationRecord[]> } {
  const seen = new Map<number, MigrationRecord>();
  let stopped = false;
  const loop = (async () => {
    while (!stopped) {
      try {
        const st = await lb.status();
        for (const m of st.migrations.recent as MigrationRecord[]) seen.set(m.epoch, m);
      } catch { /* next poll */ }
      await sleep(50);
    }
  })();
  return { stop: async () => { stopped = true; await loop; const st = await lb.status(); for (const m of st.migrations.recent as MigrationRecord[]) seen.set(m.epoch, m); return [...seen.values()]; } };
}

async function migrationSummary(lb: Flowlb, records: MigrationRecord[]): Promise<object> {
  const st = await lb.status();
  const text = await (await fetch(`http://127.0.0.1:${lb.httpPort}/metrics`)).text();
  const h = parseHistogram(text, 'flowlb_migration_duration_seconds');
  const counts = h.cum.map((c, i) => c - (i > 0 ? h.cum[i - 1]! : 0));
  const leMs = h.le.map((x) => x * 1000);
  const d = records.filter((r) => r.outcome === 'done').map((r) => r.durationMs);
  return {
    completed: st.migrations.completed, timeouts: st.migrations.timeouts, aborted: st.migrations.aborted,
    recordsSeen: records.length,
    durationMs: { p50: percentile(d, 0.5), p90: percentile(d, 0.9), p99: percentile(d, 0.99), max: Math.max(...d) },
    histogram: { total: counts.reduce((a, b) => a + b, 0), p50UpperBoundMs: histogramQuantile(leMs, counts, 0.5), p99UpperBoundMs: histogramQuantile(leMs, counts, 0.99) },
    withHeldPackets: records.filter((r) => r.held > 0).length,
    withHandedOverPackets: records.filter((r) => r.handedOverBytes > 0).length,
    flowsMovedPerMigration: percentile(records.map((r) => r.flows), 0.5),
    dropped: st.dropped,
  };
}

// ---- A: generator + echo ----
async function partA(): Promise<object> {
  const lb = await startFlowlb(['--workers', String(WORKERS), '--buckets', String(BUCKETS), '--no-balance']);
  try {
    await runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows: 32, ratePps: 1000, durationMs: 1000, sizeBytes: 100, drainMs: 300 });
    const col = collectMigrations(lb);
    const until = performance.now() + seconds * 1000;
    const [gen, moves] = await Promise.all([
      runGenerator({ target: { host: '127.0.0.1', port: lb.port }, flows, ratePps: rate, durationMs: seconds * 1000, sizeBytes: 100, procs: 2, drainMs: 2000, socketBufferBytes: 1 << 20 }),
      sleep(200).then(() => storm(lb, until - 300)),
    ]);
    const records = await col.stop();
    const mig = await migrationSummary(lb, records);
    const st = await lb.status();
    return {
      sent: gen.sent, received: gen.received, lost: gen.lost, reordered: gen.reordered, duplicated: gen.duplicated, invalid: gen.invalid,
      rtt: gen.rtt, generatorBound: gen.generatorBound, moves, migrations: mig,
      flowlbDrops: { primary: st.dropped, workers: st.workers.map((w: { drops: object }) => w.drops) },
    };
  } finally { await lb.stop(); }
}

// ---- B: seq handler + dedicated client ----
async function partB(): Promise<object> {
  const lb = await startFlowlb(['--workers', String(WORKERS), '--buckets', String(BUCKETS), '--no-balance', '--handler', path.join(ROOT, 'test/fixtures/seq-handler.js')]);
  const sockets: dgram.Socket[] = [];
  try {
    const sent = new Array<number>(flows).fill(0);
    const seen: Uint8Array[] = Array.from({ length: flows }, () => new Uint8Array(Math.ceil((rate / flows) * (seconds + 2)) + 16));
    const maxSeen = new Array<number>(flows).fill(0), lastWorker = new Array<number>(flows).fill(-1), switches = new Array<number>(flows).fill(0);
    let received = 0, duplicated = 0, reordered = 0, countMismatch = 0, malformed = 0;
    const mismatchExamples: string[] = [];
    for (let f = 0; f < flows; f++) {
      const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 1 << 20 });
      s.on('message', (m) => {
        const parts = m.toString().split(' ');
        const worker = Number(parts[0]), count = Number(parts[2]), seq = Number(parts[3]);
        if (parts.length !== 4 || !Number.isInteger(seq) || seq < 1 || seq > seen[f]!.length - 1) { malformed++; return; }
        if (seen[f]![seq]) { duplicated++; return; }
        seen[f]![seq] = 1;
        received++;
        if (seq < maxSeen[f]!) reordered++; else maxSeen[f] = seq;
        if (count !== seq) { countMismatch++; if (mismatchExamples.length < 5) mismatchExamples.push(`flow ${f}: payload ${seq}, handler count ${count}`); }
        if (lastWorker[f] !== -1 && lastWorker[f] !== worker) switches[f]!++;
        lastWorker[f] = worker;
      });
      await new Promise<void>((r) => s.bind({ address: '127.0.0.1', port: 0, exclusive: true }, () => r()));
      await new Promise<void>((r) => s.connect(lb.port, '127.0.0.1', () => r()));
      sockets.push(s);
    }
    const col = collectMigrations(lb);
    const until = performance.now() + seconds * 1000;
    const moves = storm(lb, until - 300);
    // Sender: the rate spread round robin over the flows, payload = the flow's next sequence number.
    const startMs = performance.now();
    let total = 0, next = 0;
    while (performance.now() < until) {
      const due = Math.floor(((performance.now() - startMs) / 1000) * rate) - total;
      for (let i = 0; i < Math.min(due, 256); i++) {
        const f = next; next = (next + 1) % flows;
        if (sent[f]! + 1 >= seen[f]!.length) continue;
        sockets[f]!.send(String(++sent[f]!));
        total++;
      }
      await sleep(1);
    }
    const stormed = await moves;
    const deadline = performance.now() + 3000;
    while (received < total && performance.now() < deadline) await sleep(50);
    await sleep(100);
    const records = await col.stop();
    const mig = await migrationSummary(lb, records);
    const st = await lb.status();
    return {
      sent: total, received, lost: total - received, reordered, duplicated, countMismatch, mismatchExamples, malformed,
      flowsThatChangedWorker: switches.filter((x) => x > 0).length, workerChangesSeenByClient: switches.reduce((a, b) => a + b, 0),
      moves: stormed, migrations: mig,
      flowlbDrops: { primary: st.dropped, workers: st.workers.map((w: { drops: object }) => w.drops) },
    };
  } finally {
    for (const s of sockets) s.close();
    await lb.stop();
  }
}

const quietWaitMs = args['quiet-wait'] * 1000;
const quietA = quietWaitMs > 0 ? await waitForQuiet(quietWaitMs) : null;
const a = await partA() as any;
console.log(`A. generator + echo, ${flows} flows, ${rate} pps for ${seconds} s, ${BUCKETS} buckets, ${concurrency} moves every ${periodMs} ms:`);
console.log(`   sent ${a.sent}, received ${a.received}, lost ${a.lost}, reordered ${a.reordered}, duplicated ${a.duplicated}; moves requested ${a.moves.requested}, started ${a.moves.started}; ` +
  `migrations done ${a.migrations.completed}, timeouts ${a.migrations.timeouts}; duration p50 ${a.migrations.durationMs.p50.toFixed(2)} ms, p99 ${a.migrations.durationMs.p99.toFixed(2)} ms, max ${a.migrations.durationMs.max.toFixed(2)} ms ` +
  `(histogram p50 <= ${a.migrations.histogram.p50UpperBoundMs} ms, p99 <= ${a.migrations.histogram.p99UpperBoundMs} ms); with held packets ${a.migrations.withHeldPackets}, with handed-over packets ${a.migrations.withHandedOverPackets}`);
const quietB = quietWaitMs > 0 ? await waitForQuiet(quietWaitMs) : null;
const b = await partB() as any;
console.log(`B. seq handler + client, same storm:`);
console.log(`   sent ${b.sent}, received ${b.received}, lost ${b.lost}, reordered ${b.reordered}, duplicated ${b.duplicated}, handler count != sequence ${b.countMismatch}${b.mismatchExamples.length ? ` (${b.mismatchExamples.join('; ')})` : ''}; ` +
  `flows that changed worker ${b.flowsThatChangedWorker}/${flows} (${b.workerChangesSeenByClient} changes seen); migrations done ${b.migrations.completed}, timeouts ${b.migrations.timeouts}; ` +
  `duration p50 ${b.migrations.durationMs.p50.toFixed(2)} ms, p99 ${b.migrations.durationMs.p99.toFixed(2)} ms, max ${b.migrations.durationMs.max.toFixed(2)} ms`);
const ok = [a.lost, a.reordered, a.duplicated, b.lost, b.reordered, b.duplicated, b.countMismatch].every((x) => x === 0)
  && a.migrations.timeouts === 0 && b.migrations.timeouts === 0;
console.log(`   all of lost, reordered, duplicated, count mismatches and timeouts zero: ${ok ? 'yes' : 'NO'}`);
const file = writeResult('migration-storm', {
  command: `node dist/bench/migration-storm.js ${process.argv.slice(2).join(' ')}`.trim(),
  seconds, rate, flows, buckets: BUCKETS, workers: WORKERS, periodMs, concurrency, ok, quietBefore: { a: quietA, b: quietB }, generatorEcho: a, seqHandler: b,
});
console.log(`   written ${file}`);
