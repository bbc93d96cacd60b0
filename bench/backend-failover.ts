/**
 * Passive backend health of the proxy: one live backend and one failed one, N client flows sending one numbered
 * packet every `--interval-ms` for `--rounds` rounds. Counts, per flow, the packets that got no answer, with passive
 * health on and off, side by side on one flowlb build. Two kinds of failed backend:
 * - closed: a port nothing listens on (ICMP port unreachable); health on is the default (maxFails 1), off is
 *   maxFails 0;
 * - silent: a socket that reads and never answers (no ICMP: a hung server, a firewall that drops); health on is
 *   `responseTimeout: "500ms"`, off is the default (no response timeout);
 * - stops: a backend that answers for the first third of the rounds, then goes silent (a server that hangs under
 *   traffic); health as for silent. Packets lost per flow x the interval is how long it took to notice.
 * Every flow Maglev put on the failed backend loses its packets until that worker takes it out of its table; with
 * health off those flows lose everything.
 *
 *   node dist/bench/backend-failover.js [--flows 40] [--rounds 30] [--interval-ms 50] [--workers 2]
 *
 * Writes results/backend-failover.json.
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, makeWorkDir, removeWorkDir, startFlowlbProxy } from './lib/peers.js';
import { parseBenchArgs } from './lib/args.js';
import { sleep, writeResult } from './lib/procs.js';

const args = parseBenchArgs('backend-failover', 'Passive backend health of the proxy: packets lost per flow with one backend closed, silent or going silent, health on and off.', {
  flows: { type: 'number', default: 40, check: 'positive-int', describe: 'Client flows (one socket each)' },
  rounds: { type: 'number', default: 30, check: 'positive-int', describe: 'Packets each flow sends, one per round' },
  'interval-ms': { type: 'number', default: 50, check: 'nonnegative', describe: 'Pause between rounds, ms' },
  workers: { type: 'number', default: 2, check: 'positive-int', describe: 'flowlb workers' },
});
const flows = args.flows;
const rounds = args.rounds;
const intervalMs = args['interval-ms'];
const workers = args.workers;
const HOST = '127.0.0.1';

function bound(): Promise<dgram.Socket> {
  return new Promise((resolve) => {
    const s = dgram.createSocket('udp4');
    s.bind(0, HOST, () => resolve(s));
  });
}

type FailedKind = 'closed' | 'silent' | 'stops';

/** The `stops` backend answers while this is false. */
let stopAnswering = false;

interface Run {
  readonly failed: FailedKind;
  readonly health: boolean;
  readonly handlerOptions: Record<string, unknown>;
  /** Flows whose first packet got no answer: the ones Maglev put on the failed backend. */
  readonly flowsOnFailedBackend: number;
  /** lost packets -> number of flows that lost that many */
  readonly lostPerFlow: Record<number, number>;
  readonly lost: number;
  readonly sent: number;
  readonly metrics: Record<string, number>;
}

async function runOnce(failed: FailedKind, health: boolean, livePort: number, failedPort: number, dir: string): Promise<Run> {
  const handlerOptions = failed === 'closed' ? { maxFails: health ? 1 : 0 } : health ? { responseTimeout: '500ms' } : {};
  const config = path.join(dir, `failover-${failed}-${health}.json`);
  fs.writeFileSync(config, JSON.stringify({ handlerOptions }));
  const lb = await startFlowlbProxy({
    dir, workers, dns: false, backends: [{ host: HOST, port: livePort }, { host: HOST, port: failedPort }], args: ['--config', config],
  });
  stopAnswering = false;
  const clients = await Promise.all(Array.from({ length: flows }, bound));
  const answered = clients.map(() => new Set<number>());
  const backendOf = clients.map(() => new Set<string>());
  clients.forEach((c, i) => c.on('message', (m) => {
    const [who, , seq] = m.toString().split(' ');
    answered[i]!.add(Number(seq));
    backendOf[i]!.add(who!);
  }));
  try {
    for (let r = 1; r <= rounds; r++) {
      if (failed === 'stops' && r === Math.floor(rounds / 3) + 1) stopAnswering = true;
      for (const [i, c] of clients.entries()) c.send(`f${i} ${r}`, lb.port, HOST);
      await sleep(intervalMs);
    }
    await sleep(300);
    const text = await (await fetch(`http://${HOST}:${lb.httpPort}/metrics`)).text();
    const metrics: Record<string, number> = {};
    for (const m of text.matchAll(/^(flowlb_backend_(?:up|marked_down_total|down_workers|errors_total)\{[^}]*\}) (\S+)$/gm)) metrics[m[1]!] = Number(m[2]);
    const lostPerFlow: Record<number, number> = {};
    let lost = 0;
    for (const a of answered) {
      const l = rounds - a.size;
      lost += l;
      lostPerFlow[l] = (lostPerFlow[l] ?? 0) + 1;
    }
    // A flow that lost its first packet was on the failed backend (the live one answers every packet it gets); one
    // that the stopping backend answered was on it.
    const flowsOnFailedBackend = failed === 'stops' ? backendOf.filter((b) => b.has('B')).length : answered.filter((a) => !a.has(1)).length;
    return { failed, health, handlerOptions, flowsOnFailedBackend, lostPerFlow, lost, sent: flows * rounds, metrics };
  } finally {
    for (const c of clients) c.close();
    await lb.stop();
  }
}

const dir = makeWorkDir('flowlb-failover-');
const live = dgram.createSocket('udp4');
live.on('message', (m, r) => live.send(Buffer.concat([Buffer.from('A '), m]), r.port, r.address));
await new Promise<void>((r) => live.bind(0, HOST, () => r()));
const closedPort = await freePort();
// Bound, so the kernel sends no ICMP; reads everything and answers nothing.
const silent = dgram.createSocket('udp4');
silent.on('message', () => {});
await new Promise<void>((r) => silent.bind(0, HOST, () => r()));
const silentPort = silent.address().port;
const stopping = dgram.createSocket('udp4');
stopping.on('message', (m, r) => { if (!stopAnswering) stopping.send(Buffer.concat([Buffer.from('B '), m]), r.port, r.address); });
await new Promise<void>((r) => stopping.bind(0, HOST, () => r()));
const runs: Run[] = [];
try {
  for (const [failed, port] of [['closed', closedPort], ['silent', silentPort], ['stops', stopping.address().port]] as const) {
    for (const health of [true, false]) {
      const run = await runOnce(failed, health, live.address().port, port, dir);
      runs.push(run);
      console.log(`${failed} backend, health ${health ? 'on' : 'off'} ${JSON.stringify(run.handlerOptions)}: ${run.flowsOnFailedBackend} of ${flows} flows started on it; ` +
        `lost ${run.lost} of ${run.sent} packets; lost per flow (lost: flows) ${JSON.stringify(run.lostPerFlow)}`);
      for (const [k, v] of Object.entries(run.metrics)) if (k.includes(`:${port}"`) && (!k.includes('errors_total') || (v > 0 && !k.includes('"send"')))) console.log(`  ${k} ${v}`);
    }
  }
} finally {
  live.close();
  silent.close();
  stopping.close();
  removeWorkDir(dir);
}
console.log(`wrote ${writeResult('backend-failover', { flows, rounds, intervalMs, workers, closedPort, silentPort, runs })}`);
