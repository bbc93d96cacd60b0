/**
 * SIP calls through flowlb's proxy: a sipp UAC places calls to flowlb, which forwards each call to one of two
 * sipp UAS backends. `-t un` gives every call its own UDP socket, so one call = one flow: INVITE, ACK and BYE of
 * a call must reach the same backend (flow affinity) or the UAS answers the ACK/BYE as an unknown call and
 * the call fails. The check: every call succeeds at the UAC and at the UAS side, and the calls split over
 * both backends.
 *
 *   node dist/bench/sip.js [--short] [--calls 200] [--rate 20] [--hold-ms 1000] [--workers 2] [--via flowlb|nginx]
 *
 * `--via nginx` runs the same calls through nginx's stream UDP proxy instead (2 workers, round robin), with
 * the settings SIP needs: no proxy_responses (with `proxy_responses 1`, bench/peers.ts's DNS setting, the
 * session ends at the first reply, a 100/180, and the 200 OK is dropped) and a proxy_timeout longer than the
 * call, so a call's datagrams stay in one session and reach one backend.
 *
 * Writes results/sip.json; exits 1 if any call failed or a backend got no calls, 0 when sipp is missing
 * (skipped, with the reason).
 */
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import {
  flowlbBuild, freePort, makeWorkDir, missingTools, removeWorkDir, NGINX_STREAM_MODULE, readSippStats, runToolStatus, startFlowlbProxy, startNginx, startSippUas,
  tail, toolVersion, type Proxy, type SippStats, type SippUas,
} from './lib/peers.js';
import { parseBenchArgs } from './lib/args.js';
import { sleep, writeResult } from './lib/procs.js';

const args = parseBenchArgs('sip', 'SIP calls (sipp, one UDP flow per call) through flowlb\'s proxy to two sipp UAS backends: every call must succeed.', {
  short: { type: 'boolean', describe: 'Short run: fewer, shorter calls' },
  calls: { type: 'number', default: 200, short: 60, check: 'positive-int', describe: 'Calls placed' },
  rate: { type: 'number', default: 20, check: 'positive', describe: 'New calls per second' },
  'hold-ms': { type: 'number', default: 1000, short: 500, check: 'nonnegative-int', describe: 'Call length (sipp -d), ms' },
  workers: { type: 'number', default: 2, check: 'positive-int', describe: 'Proxy workers (flowlb or nginx)' },
  via: { type: 'string', default: 'flowlb', choices: ['flowlb', 'nginx'], describe: 'Proxy the calls go through' },
});
const short = args.short;
const calls = args.calls;
const rate = args.rate;
const holdMs = args['hold-ms'];
const workers = args.workers;
const via = args.via;
/** The UAS scenario pauses 4 s after the final 200 (to absorb retransmissions) before it counts the call. */
const UAS_TAIL_MS = 4000;

function openFileLimit(): number {
  const r = spawnSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' });
  const n = Number(r.stdout.trim());
  return Number.isFinite(n) && n > 0 ? n : 1024;
}

const started = Date.now();
const missing = missingTools(via === 'nginx' ? ['sipp', 'nginx'] : ['sipp'], via === 'nginx' ? [{ file: NGINX_STREAM_MODULE, what: 'libnginx-mod-stream' }] : []);
if (missing) {
  console.log(`sip: skipped: ${missing}`);
  writeResult('sip', { skipped: missing });
  process.exit(0);
}

// Concurrent calls are about rate x (hold + a few ms); sockets beyond them are headroom. sipp needs its own
// descriptors too, so stay well below the limit.
const maxSocket = Math.max(16, Math.min(1024, Math.ceil(rate * (holdMs / 1000 + 1) * 4), openFileLimit() - 64));
const dir = makeWorkDir('sip');
const uas: SippUas[] = [await startSippUas({ dir, name: 'uas-1' }), await startSippUas({ dir, name: 'uas-2' })];
const backends = uas.map((u) => ({ host: '127.0.0.1', port: u.port }));
const proxy: Proxy = via === 'flowlb' ? await startFlowlbProxy({ dir, backends, dns: false, workers }) : await startNginx({ dir, backends, dns: false, workers, responses: null, timeoutSec: Math.ceil(holdMs / 1000) + 30 });
const uacStat = path.join(dir, 'uac.csv');
const uacPort = await freePort();
const timeoutSec = Math.ceil(calls / rate + holdMs / 1000 + 30);
const uacArgs = [
  '-sn', 'uac', `127.0.0.1:${proxy.port}`, '-t', 'un', '-max_socket', String(maxSocket),
  '-r', String(rate), '-m', String(calls), '-d', String(holdMs), '-i', '127.0.0.1', '-p', String(uacPort),
  '-nostdin', '-trace_stat', '-stf', uacStat, '-fd', '1', '-timeout', `${timeoutSec}s`, '-timeout_error',
];
console.log(`sip: ${calls} calls at ${rate} cps, hold ${holdMs} ms, -max_socket ${maxSocket}, via ${via} (${workers} workers) to 2 UAS`);

let uac: SippStats | null = null, uacCode: number | null = null, uacOut = '';
let uasStats: (SippStats | null)[] = [];
let status: any = null;
try {
  const r = await runToolStatus('sipp', uacArgs, { timeoutMs: (timeoutSec + 15) * 1000, cwd: dir });
  uacCode = r.code;
  uacOut = r.out;
  uac = readSippStats(uacStat);
  // Wait for the UAS side to count every call (its scenario's final pause), with a deadline.
  const deadline = Date.now() + UAS_TAIL_MS + 5000;
  for (;;) {
    uasStats = uas.map((u) => u.stats());
    const done = uasStats.reduce((a, s) => a + (s ? s.successful + s.failed : 0), 0);
    if (done >= (uac?.successful ?? calls) || Date.now() > deadline) break;
    await sleep(500);
  }
  status = proxy.status ? await proxy.status() : null;
} finally {
  await proxy.stop();
  for (const u of uas) await u.stop();
}

const perBackend = uasStats.map((s) => s?.successful ?? 0);
const uasFailed = uasStats.reduce((a, s) => a + (s?.failed ?? 0), 0);
const problems: string[] = [];
if (uacCode !== 0) problems.push(`sipp UAC exited ${uacCode}`);
if (!uac) problems.push('no UAC statistics');
else {
  if (uac.successful !== calls) problems.push(`UAC: ${uac.successful}/${calls} calls successful`);
  if (uac.failed > 0) problems.push(`UAC: ${uac.failed} failed (${JSON.stringify(uac.failures)})`);
}
if (uasFailed > 0) problems.push(`UAS: ${uasFailed} failed`);
if (perBackend.reduce((a, b) => a + b, 0) !== calls) problems.push(`UAS: ${perBackend.join('+')} successful, expected ${calls}`);
if (perBackend.some((n) => n === 0)) problems.push(`a backend got no calls (${perBackend.join('/')})`);
const ok = problems.length === 0;

const file = writeResult(via === 'flowlb' ? 'sip' : `sip-${via}`, {
  short, via, calls, rate, holdMs, workers, maxSocket, ok, problems, flowlbBuild: flowlbBuild(),
  sipp: toolVersion('sipp', ['-v'], /SIPp (v[\d.]+)/),
  command: `sipp ${uacArgs.join(' ')}`,
  uac, uacExitCode: uacCode, uas: uasStats, callsPerBackend: perBackend,
  flowlb: status ? {
    workers: status.workers.map((w: any) => ({ pid: w.pid, handled: w.handled, replies: w.replies, flowsActive: w.flowsActive, drops: w.drops, restarts: w.restarts })),
    received: status.received, dropped: status.dropped, migrations: { completed: status.migrations?.completed, aborted: status.migrations?.aborted, timeouts: status.migrations?.timeouts },
  } : null,
  elapsedSec: Math.round((Date.now() - started) / 1000),
  ...(ok ? {} : { uacOutputTail: tail(uacOut) }),
});
console.log(`sip: ${ok ? 'OK' : 'FAILED'}: ${uac?.successful ?? 0}/${calls} calls successful, ${uac?.failed ?? '?'} failed; ` +
  `per backend ${perBackend.join('/')}; INVITE->200 avg ${uac?.responseTime1Ms ?? '?'} ms, call length avg ${uac?.callLengthMs ?? '?'} ms; ` +
  `${uac?.retransmissions ?? '?'} retransmissions, ${uasStats.reduce((a, s) => a + (s?.outOfCallMsgs ?? 0), 0)} out-of-call messages at the UAS` +
  `${ok ? '' : `; ${problems.join('; ')}`}`);
console.log(`written ${file} in ${Math.round((Date.now() - started) / 1000)} s`);
if (ok) removeWorkDir(dir);
else { console.log(`configs and logs kept in ${dir}`); process.exitCode = 1; }
