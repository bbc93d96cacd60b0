/**
 * Peers and their tools for the comparison benchmarks (bench/peers.ts, bench/cpu-per-query.ts, bench/sip.ts):
 * config writers and launchers for nginx (stream UDP proxy), dnsdist, flowlb's proxy, and the backends (nsd,
 * sockperf server, sipp UAS), plus runners that parse dnsperf's and sockperf's output.
 *
 * Every process is started in the foreground as our child, with its config, pid file and logs in a temporary
 * directory, optionally pinned with `taskset -c CPUS` (taskset execs the command, so the pid is the daemon's
 * and every child or thread it makes inherits the affinity). Processes still running when this process exits
 * are killed, so an interrupted benchmark leaves no daemon holding a port.
 *
 * Everything listens on 127.0.0.1 only.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { cpuSeconds, ROOT, sleep } from './procs.js';

export const HOST = '127.0.0.1';
export const FIXTURES = path.join(ROOT, 'bench/fixtures');
export const ZONE_FILE = path.join(FIXTURES, 'bench.test.zone');
export const ZONE_NAME = 'bench.test';
export const QUERY_FILE = path.join(FIXTURES, 'bench.test.queries');
export const NGINX_STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so';
const READY_TIMEOUT_MS = 15_000;
/** What flowlb's primary asks for its front socket (src/control/primary.ts); the kernel caps it at rmem_max. */
const FLOWLB_FRONT_RCVBUF_BYTES = 8 * 1024 * 1024;

/**
 * The listening socket's receive buffer the peers get: the same as flowlb's front socket, so a burst that
 * flowlb's buffer absorbs is not lost at a peer for want of the same setting (the default is ~208 KB).
 */
export function frontRcvbufBytes(): number {
  let max = FLOWLB_FRONT_RCVBUF_BYTES;
  try { max = Number(fs.readFileSync('/proc/sys/net/core/rmem_max', 'utf8').trim()); } catch { /* not Linux */ }
  return Math.min(FLOWLB_FRONT_RCVBUF_BYTES, max);
}
const STOP_TIMEOUT_MS = 5_000;

// ---------------------------------------------------------------- tools

const SEARCH_PATH = [...(process.env.PATH ?? '').split(':'), '/usr/sbin', '/sbin', '/usr/local/sbin'];

/** Absolute path of an executable, or null. nsd and nginx live in /usr/sbin, often not on a user's PATH. */
export function findTool(name: string): string | null {
  for (const dir of SEARCH_PATH) {
    if (!dir) continue;
    const p = path.join(dir, name);
    try { fs.accessSync(p, fs.constants.X_OK); return p; } catch { /* next */ }
  }
  return null;
}

/** null when every tool is there, else one line naming what is missing and how to get it. */
export function missingTools(tools: readonly string[], extra: readonly { file: string; what: string }[] = []): string | null {
  const missing = tools.filter((t) => findTool(t) === null);
  for (const e of extra) if (!fs.existsSync(e.file)) missing.push(e.what);
  return missing.length === 0 ? null : `missing ${missing.join(', ')} (run scripts/install-peers.sh)`;
}

export function toolVersion(cmd: string, args: string[], pattern: RegExp): string | null {
  const tool = findTool(cmd);
  if (!tool) return null;
  const r = spawnSync(tool, args, { encoding: 'utf8', timeout: 5000 });
  const m = pattern.exec(`${r.stdout ?? ''}\n${r.stderr ?? ''}`);
  return m ? (m[1] ?? m[0]) : null;
}

/**
 * Which flowlb was measured: the commit, and whether src/ had uncommitted changes (several people work in this
 * tree and dist/ is rebuilt from whatever src/ holds).
 */
export function flowlbBuild(): { commit: string | null; srcChanged: string[] } {
  const git = (args: string[]): string | null => {
    const r = spawnSync('git', ['-C', ROOT, ...args], { encoding: 'utf8', timeout: 5000 });
    return r.status === 0 ? r.stdout.trim() : null;
  };
  const changed = git(['status', '--porcelain', '--', 'src']);
  return { commit: git(['rev-parse', '--short', 'HEAD']), srcChanged: changed ? changed.split('\n').map((l) => l.slice(3)) : [] };
}

export function makeWorkDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `flowlb-${prefix}-`));
}

/** Removes a work dir made by makeWorkDir, unless FLOWLB_KEEP_WORKDIR is set (configs and logs, for debugging). */
export function removeWorkDir(dir: string): void {
  if (process.env.FLOWLB_KEEP_WORKDIR) { console.log(`kept ${dir}`); return; }
  fs.rmSync(dir, { recursive: true, force: true });
}

/** A port free for both UDP and TCP on 127.0.0.1 right now (nsd and dnsdist listen on both). */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const udp = dgram.createSocket('udp4');
    const port = await new Promise<number>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind(0, HOST, () => resolve(udp.address().port));
    });
    const tcpFree = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(port, HOST, () => srv.close(() => resolve(true)));
    });
    udp.close();
    if (tcpFree) return port;
  }
  throw new Error('no port free for both UDP and TCP');
}

// ---------------------------------------------------------------- processes

export interface Launched {
  readonly name: string;
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Output so far (stdout and stderr), also written to `logFile`. */
  output(): string;
  readonly logFile: string;
  /** The process and all its descendants now (workers, children). */
  pids(): number[];
  /** User + system CPU seconds of pids() now (threads included; exited processes no longer count). */
  cpuSeconds(): number;
  exited(): boolean;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
/** Kills every process still running, children first found through /proc (nginx workers outlive a SIGKILLed master). */
function killAll(): void {
  for (const p of live) {
    if (p.pid === undefined) continue;
    for (const k of [...descendants(p.pid), p.pid]) try { process.kill(k, 'SIGKILL'); } catch { /* gone */ }
  }
  live.clear();
}
process.on('exit', killAll);
for (const [sig, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
  process.once(sig, () => { killAll(); process.exit(code); });
}

export interface LaunchOptions {
  /** taskset CPU list, e.g. "0" or "1"; null runs unpinned. */
  readonly cpus?: string | null;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  /** Where stdout+stderr go; default DIR/NAME.log with DIR the cwd. */
  readonly logFile?: string;
  /** Signal for stop(); default SIGTERM. */
  readonly stopSignal?: NodeJS.Signals;
}

export function launch(name: string, cmd: string, args: readonly string[], opts: LaunchOptions = {}): Launched {
  const exe = findTool(cmd) ?? cmd;
  const argv = opts.cpus != null ? ['taskset', ['-c', opts.cpus, exe, ...args]] as const : [exe, [...args]] as const;
  const proc = spawn(argv[0], argv[1], { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  const logFile = opts.logFile ?? path.join(opts.cwd ?? os.tmpdir(), `${name}.log`);
  const log = fs.createWriteStream(logFile);
  let out = '';
  const onData = (d: Buffer): void => {
    log.write(d);
    if (out.length < 1 << 20) out += d.toString();
  };
  proc.stdout!.on('data', onData);
  proc.stderr!.on('data', onData);
  let exitedFlag = false;
  const exitPromise = new Promise<void>((resolve) => proc.once('exit', () => { exitedFlag = true; live.delete(proc); resolve(); }));
  proc.once('error', () => { exitedFlag = true; live.delete(proc); });
  const pid = proc.pid ?? -1;
  const pids = (): number[] => (exitedFlag || pid < 0 ? [] : [pid, ...descendants(pid)]);
  return {
    name, proc, pid, logFile,
    output: () => out,
    pids,
    cpuSeconds: () => sumCpuSeconds(pids()),
    exited: () => exitedFlag,
    stop: async () => {
      if (exitedFlag) return;
      const kids = descendants(pid);
      proc.kill(opts.stopSignal ?? 'SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exitPromise;
      clearTimeout(timer);
      // Children of a daemon that ignored its master's exit (none should) would hold the port.
      for (const k of kids) try { process.kill(k, 0); process.kill(k, 'SIGKILL'); } catch { /* gone */ }
      log.end();
    },
  };
}

/** Every live descendant of pid, from the ppid field of /proc/N/stat. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try { stat = fs.readFileSync(`/proc/${entry}/stat`, 'utf8'); } catch { continue; }
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    const list = children.get(ppid);
    if (list) list.push(Number(entry)); else children.set(ppid, [Number(entry)]);
  }
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    for (const c of children.get(queue.shift()!) ?? []) { out.push(c); queue.push(c); }
  }
  return out;
}

export function sumCpuSeconds(pids: readonly number[]): number {
  let total = 0;
  for (const p of pids) try { total += cpuSeconds(p); } catch { /* exited */ }
  return total;
}

/** Waits until something is bound to udp PORT on this host (any process), from /proc/net/udp. */
export async function waitUdpBound(port: number, who: Launched, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const hex = `:${port.toString(16).toUpperCase().padStart(4, '0')} `;
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (who.exited()) throw new Error(`${who.name} exited during start: ${tail(who.output())}`);
    for (const f of ['/proc/net/udp', '/proc/net/udp6']) {
      let text = '';
      try { text = fs.readFileSync(f, 'utf8'); } catch { continue; }
      for (const line of text.split('\n')) if (line.trim().split(/\s+/)[1]?.endsWith(hex.trim())) return;
    }
    await sleep(50);
  }
  throw new Error(`${who.name} did not bind udp port ${port} within ${timeoutMs} ms: ${tail(who.output())}`);
}

export function tail(s: string): string {
  return s.trim().split('\n').slice(-5).join(' | ') || '(no output)';
}

/** A reading of the whole machine's CPU counters (/proc/stat), to tell how busy it was over a run. */
export interface MachineCpu { readonly busyTicks: number; readonly atMs: number }

export function machineCpu(): MachineCpu {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((a, b) => a + b, 0);
  return { busyTicks: total - f[3]! - f[4]!, atMs: performance.now() };
}

/**
 * Cores busy on the whole machine since `from` (every process, ours and anyone else's): on a shared machine
 * this says how much of the run's noise came from outside.
 */
export function busyCoresSince(from: MachineCpu): number {
  const now = machineCpu();
  return Math.round(((now.busyTicks - from.busyTicks) / 100 / ((now.atMs - from.atMs) / 1000)) * 100) / 100;
}

/**
 * Cores the rest of the machine keeps busy over `ms` while the caller runs nothing: what other people's work
 * takes of a shared machine just before a measurement.
 */
export async function backgroundBusyCores(ms = 1000): Promise<number> {
  const m0 = machineCpu();
  await sleep(ms);
  return busyCoresSince(m0);
}

// ---------------------------------------------------------------- DNS probe

/** A standard query for NAME/TYPE with id, as bytes (RD clear: the backends are authoritative). */
export function dnsQuery(name: string, qtype: number, id: number): Buffer {
  const labels = name.replace(/\.$/, '').split('.');
  const qname = Buffer.concat([...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'ascii')])), Buffer.from([0])]);
  const header = Buffer.alloc(12);
  header.writeUInt16BE(id, 0);
  header.writeUInt16BE(1, 4); // QDCOUNT
  const tail2 = Buffer.alloc(4);
  tail2.writeUInt16BE(qtype, 0);
  tail2.writeUInt16BE(1, 2); // class IN
  return Buffer.concat([header, qname, tail2]);
}

/** Resolves once PORT answers a SOA query for the bench zone with NOERROR (retrying), else throws. */
export async function waitDnsAnswers(port: number, who: Launched, timeoutMs = READY_TIMEOUT_MS): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const sock = dgram.createSocket('udp4');
  await new Promise<void>((r) => sock.bind(0, HOST, () => r()));
  let ok = false;
  sock.on('message', (m) => { if (m.length >= 4 && (m[3]! & 0x0f) === 0) ok = true; });
  try {
    let id = 1;
    while (!ok && Date.now() < deadline) {
      if (who.exited()) throw new Error(`${who.name} exited during start: ${tail(who.output())}`);
      sock.send(dnsQuery(ZONE_NAME, 6, id++ & 0xffff), port, HOST);
      for (let i = 0; i < 10 && !ok; i++) await sleep(20);
    }
  } finally {
    sock.close();
  }
  if (!ok) throw new Error(`${who.name} did not answer DNS on port ${port} within ${timeoutMs} ms: ${tail(who.output())}`);
}

// ---------------------------------------------------------------- backends

export interface Endpoint { readonly host: string; readonly port: number }

export interface NsdBackend extends Launched {
  readonly port: number;
  readonly identity: string;
  /** Queries served since start (nsd-control stats_noreset), or null if nsd-control is not usable. */
  queries(): number | null;
}

export function nsdConf(o: { dir: string; port: number; identity: string; zoneFile: string }): string {
  return `# written by bench/lib/peers.ts: one authoritative server, loopback only, no rate limit, one server process
server:
  ip-address: ${HOST}@${o.port}
  do-ip6: no
  server-count: 1
  username: ""
  chroot: ""
  zonesdir: "${o.dir}"
  database: ""
  zonelistfile: "${o.dir}/zone.list"
  xfrdfile: "${o.dir}/xfrd.state"
  xfrdir: "${o.dir}"
  pidfile: "${o.dir}/nsd.pid"
  logfile: "${o.dir}/nsd.log"
  verbosity: 0
  rrl-ratelimit: 0
  tcp-count: 16
  identity: "${o.identity}"
  hide-version: yes
remote-control:
  control-enable: yes
  control-interface: ${o.dir}/nsd.ctl
zone:
  name: ${ZONE_NAME}
  zonefile: ${path.basename(o.zoneFile)}
`;
}

export async function startNsd(o: { dir: string; identity: string; cpus?: string | null }): Promise<NsdBackend> {
  const dir = path.join(o.dir, o.identity);
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(ZONE_FILE, path.join(dir, path.basename(ZONE_FILE)));
  const port = await freePort();
  const conf = path.join(dir, 'nsd.conf');
  fs.writeFileSync(conf, nsdConf({ dir, port, identity: o.identity, zoneFile: ZONE_FILE }));
  const l = launch(`nsd-${o.identity}`, 'nsd', ['-d', '-c', conf], { cpus: o.cpus, cwd: dir });
  await waitDnsAnswers(port, l);
  const control = findTool('nsd-control');
  return {
    ...l, port, identity: o.identity,
    queries: () => {
      if (!control) return null;
      const r = spawnSync(control, ['-c', conf, 'stats_noreset'], { encoding: 'utf8', timeout: 5000 });
      const m = /^num\.queries=(\d+)/m.exec(r.stdout ?? '');
      return m ? Number(m[1]) : null;
    },
  };
}

export interface PlainBackend extends Launched { readonly port: number }

export async function startSockperfServer(o: { dir: string; name: string; cpus?: string | null }): Promise<PlainBackend> {
  const port = await freePort();
  const l = launch(`sockperf-${o.name}`, 'sockperf', ['server', '-i', HOST, '-p', String(port)], { cpus: o.cpus, cwd: o.dir });
  await waitUdpBound(port, l);
  return { ...l, port };
}

export interface SippUas extends PlainBackend {
  readonly statFile: string;
  /** The last line of its -trace_stat CSV (cumulative counters), or null before the first dump. */
  stats(): SippStats | null;
}

/** sipp's built-in UAS scenario (INVITE -> 180, 200; ACK; BYE -> 200; then a 4 s pause for retransmissions). */
export async function startSippUas(o: { dir: string; name: string; cpus?: string | null }): Promise<SippUas> {
  const port = await freePort();
  const statFile = path.join(o.dir, `${o.name}.csv`);
  const l = launch(`sipp-${o.name}`, 'sipp', [
    '-sn', 'uas', '-i', HOST, '-p', String(port), '-nostdin', '-trace_stat', '-stf', statFile, '-fd', '1',
  ], { cpus: o.cpus, cwd: o.dir });
  await waitUdpBound(port, l);
  return { ...l, port, statFile, stats: () => readSippStats(statFile) };
}

/** Cumulative counters from the last line of a sipp -trace_stat CSV (';'-separated, header names like "SuccessfulCall(C)"). */
export interface SippStats {
  readonly incoming: number;
  readonly outgoing: number;
  readonly successful: number;
  readonly failed: number;
  readonly current: number;
  /** Every "Failed...(C)" counter that is not 0. */
  readonly failures: Record<string, number>;
  /** Messages sent again for want of an answer within T1 (500 ms, doubling): a lost or late datagram. */
  readonly retransmissions: number;
  /** Messages that matched no call (e.g. an ACK or BYE that reached the wrong UAS), and ones for a finished call. */
  readonly outOfCallMsgs: number;
  readonly deadCallMsgs: number;
  /** Cumulative averages, milliseconds (sipp prints HH:MM:SS:usec). */
  readonly responseTime1Ms: number | null;
  readonly callLengthMs: number | null;
}

export function readSippStats(file: string): SippStats | null {
  let text: string;
  try { text = fs.readFileSync(file, 'utf8'); } catch { return null; }
  const lines = text.split('\n').filter((x) => x.trim() !== '');
  if (lines.length < 2) return null;
  const header = lines[0]!.split(';');
  const last = lines[lines.length - 1]!.split(';');
  const get = (name: string): string | undefined => { const i = header.indexOf(name); return i >= 0 ? last[i] : undefined; };
  const num = (name: string): number => Number(get(name) ?? NaN);
  const failures: Record<string, number> = {};
  header.forEach((h, i) => { if (/^Failed.*\(C\)$/.test(h) && Number(last[i]) > 0) failures[h] = Number(last[i]); });
  return {
    incoming: num('IncomingCall(C)'), outgoing: num('OutgoingCall(C)'), successful: num('SuccessfulCall(C)'),
    failed: num('FailedCall(C)'), current: num('CurrentCall'), failures,
    retransmissions: num('Retransmissions(C)'), outOfCallMsgs: num('OutOfCallMsgs(C)'), deadCallMsgs: num('DeadCallMsgs(C)'),
    responseTime1Ms: sippDurationMs(get('ResponseTime1(C)')), callLengthMs: sippDurationMs(get('CallLength(C)')),
  };
}

function sippDurationMs(v: string | undefined): number | null {
  const m = /^(\d+):(\d+):(\d+):(\d+)$/.exec(v ?? '');
  if (!m) return null;
  return ((Number(m[1]) * 60 + Number(m[2])) * 60 + Number(m[3])) * 1000 + Number(m[4]) / 1000;
}

// ---------------------------------------------------------------- proxies

export interface Proxy extends Launched {
  readonly port: number;
  /** flowlb only: its /status JSON, and the port it is served on. */
  status?(): Promise<any>;
  readonly httpPort?: number;
}

export interface ProxyOptions {
  readonly dir: string;
  readonly backends: readonly Endpoint[];
  readonly cpus?: string | null;
  /** The backends speak DNS: wait for an answer through the proxy, not just a bound port. */
  readonly dns: boolean;
}

export interface NginxOptions extends ProxyOptions {
  readonly workers?: number;
  /** One socket per worker, the kernel spreading datagrams by 4-tuple hash (nginx's advice for UDP). Default true. */
  readonly reuseport?: boolean;
  /**
   * proxy_responses: the session ends after this many responses (1: DNS-style, one upstream socket per query).
   * null leaves it out, so a client address:port keeps its session, and so its backend, until proxy_timeout
   * passes without traffic: what a dialog protocol such as SIP needs.
   */
  readonly responses?: number | null;
  /** proxy_timeout in seconds; default 2 (DNS), longer for dialogs. */
  readonly timeoutSec?: number;
}

export function nginxConf(o: {
  dir: string; port: number; backends: readonly Endpoint[]; workers: number; reuseport: boolean; responses: number | null; timeoutSec: number;
  rcvbufBytes: number;
}): string {
  return `# written by bench/lib/peers.ts: nginx stream UDP proxy, round robin over the backends
load_module ${NGINX_STREAM_MODULE};
worker_processes ${o.workers};
worker_rlimit_nofile 65536;
pid ${o.dir}/nginx.pid;
error_log ${o.dir}/error.log warn;
events {
  multi_accept on;
  worker_connections 16384;
}
stream {
  upstream backends {
${o.backends.map((b) => `    server ${b.host}:${b.port};`).join('\n')}
  }
  server {
    listen ${HOST}:${o.port} udp${o.reuseport ? ' reuseport' : ''} rcvbuf=${o.rcvbufBytes};
    proxy_pass backends;${o.responses === null ? '' : `\n    proxy_responses ${o.responses};`}
    proxy_timeout ${o.timeoutSec}s;
  }
}
`;
}

export async function startNginx(o: NginxOptions): Promise<Proxy> {
  const dir = path.join(o.dir, 'nginx');
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const conf = path.join(dir, 'nginx.conf');
  fs.writeFileSync(conf, nginxConf({
    dir, port, backends: o.backends, workers: o.workers ?? 2, reuseport: o.reuseport ?? true,
    responses: o.responses === undefined ? 1 : o.responses, timeoutSec: o.timeoutSec ?? 2, rcvbufBytes: frontRcvbufBytes(),
  }));
  // -e: the compiled-in error log (/var/log/nginx) is opened before the config is read.
  // SIGQUIT is nginx's graceful stop; SIGTERM its fast one; either ends the workers with the master.
  const l = launch('nginx', 'nginx', ['-e', path.join(dir, 'error.log'), '-p', dir, '-c', conf, '-g', 'daemon off;'], { cpus: o.cpus, cwd: dir });
  if (o.dns) await waitDnsAnswers(port, l); else await waitUdpBound(port, l);
  return { ...l, port };
}

export function dnsdistConf(o: { port: number; backends: readonly Endpoint[]; rcvbufBytes: number }): string {
  return `-- written by bench/lib/peers.ts: no security polling, no console, round robin over the backends
setSecurityPollSuffix("")
-- the listening socket's receive buffer, as flowlb's front socket (send buffer: 0 = left as it is)
setUDPSocketBufferSizes(${o.rcvbufBytes}, 0)
setLocal("${HOST}:${o.port}")
${o.backends.map((b, i) => `newServer({address="${b.host}:${b.port}", name="backend-${i + 1}", checkName="${ZONE_NAME}.", checkType="SOA"})`).join('\n')}
setServerPolicy(roundrobin)
`;
}

/** dnsdist forwards DNS only (it drops what does not parse as a query), so it is started for DNS backends only. */
export async function startDnsdist(o: ProxyOptions): Promise<Proxy> {
  const dir = path.join(o.dir, 'dnsdist');
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const conf = path.join(dir, 'dnsdist.conf');
  fs.writeFileSync(conf, dnsdistConf({ port, backends: o.backends, rcvbufBytes: frontRcvbufBytes() }));
  const l = launch('dnsdist', 'dnsdist', ['--supervised', '--disable-syslog', '-C', conf], { cpus: o.cpus, cwd: dir });
  await waitDnsAnswers(port, l);
  return { ...l, port };
}

export interface FlowlbOptions extends ProxyOptions {
  readonly workers?: number;
  /** Extra `flowlb serve` flags. */
  readonly args?: readonly string[];
  /** Node flags for the primary; cluster workers inherit them (process.execArgv), e.g. --cpu-prof. */
  readonly execArgv?: readonly string[];
}

export async function startFlowlbProxy(o: FlowlbOptions): Promise<Proxy> {
  const dir = path.join(o.dir, 'flowlb');
  fs.mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const args = [
    ...(o.execArgv ?? []), path.join(ROOT, 'dist/src/cli.js'), 'serve',
    '--listen', `${HOST}:${port}`, '--http', `${HOST}:0`, '--workers', String(o.workers ?? 2),
    '--handler', 'proxy', ...o.backends.flatMap((b) => ['--backend', `${b.host}:${b.port}`]),
    '--log-level', 'warn', ...(o.args ?? []),
  ];
  const l = launch('flowlb', process.execPath, args, { cpus: o.cpus, cwd: dir });
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let httpPort = 0;
  while (httpPort === 0) {
    const m = /flowlb listening udp=\S+ http=\S+:(\d+)/.exec(l.output());
    if (m) httpPort = Number(m[1]);
    else if (l.exited() || Date.now() > deadline) throw new Error(`flowlb did not start: ${tail(l.output())}`);
    else await sleep(50);
  }
  if (o.dns) await waitDnsAnswers(port, l);
  return {
    ...l, port, httpPort,
    status: async () => (await fetch(`http://${HOST}:${httpPort}/status`)).json(),
  };
}

export type PeerName = 'flowlb' | 'nginx' | 'dnsdist';

export interface PeerSpec {
  readonly name: PeerName;
  readonly label: string;
  /** null when it can run here, else why not. */
  readonly unavailable: string | null;
  /** Speaks any UDP payload (false: DNS only). */
  readonly anyUdp: boolean;
  start(o: ProxyOptions): Promise<Proxy>;
}

/** The three proxies as the benchmarks run them: flowlb proxy (2 workers), nginx stream (2 workers), dnsdist. */
export function peerSpecs(opts: { flowlbWorkers?: number; nginxWorkers?: number } = {}): PeerSpec[] {
  const fw = opts.flowlbWorkers ?? 2, nw = opts.nginxWorkers ?? 2;
  const flowlbBuilt = fs.existsSync(path.join(ROOT, 'dist/src/cli.js')) ? null : 'dist/src/cli.js missing (run npx tsc -p .)';
  return [
    { name: 'flowlb', label: `flowlb proxy (${fw} workers)`, unavailable: flowlbBuilt, anyUdp: true, start: (o) => startFlowlbProxy({ ...o, workers: fw }) },
    {
      name: 'nginx', label: `nginx stream (${nw} workers)`, anyUdp: true,
      unavailable: missingTools(['nginx'], [{ file: NGINX_STREAM_MODULE, what: 'libnginx-mod-stream' }]),
      start: (o) => startNginx({ ...o, workers: nw }),
    },
    { name: 'dnsdist', label: 'dnsdist', unavailable: missingTools(['dnsdist']), anyUdp: false, start: (o) => startDnsdist(o) },
  ];
}

// ---------------------------------------------------------------- load tools

export interface DnsperfResult {
  readonly sent: number;
  readonly completed: number;
  readonly lost: number;
  readonly lostPct: number;
  readonly qps: number;
  readonly avgLatencyUs: number;
  readonly maxLatencyUs: number;
  /** Per-query latencies in microseconds, with `verbose`. */
  readonly latenciesUs?: number[];
  readonly noerrorPct: number;
  readonly command: string;
}

export interface DnsperfOptions {
  readonly port: number;
  readonly seconds: number;
  /** -Q: offered queries/s; omitted = closed loop (as fast as answers allow, up to `outstanding`). */
  readonly qps?: number;
  /** -c: client sockets, i.e. flows. */
  readonly clients?: number;
  /** -q: queries in flight at most. */
  readonly outstanding?: number;
  /** -t: a query unanswered this long counts as lost. */
  readonly timeoutSec?: number;
  /** -v: one line per query, for percentiles (dnsperf 2.10 prints none itself). */
  readonly verbose?: boolean;
  readonly cpus?: string | null;
  readonly queryFile?: string;
}

export function dnsperfArgs(o: DnsperfOptions): string[] {
  // -a: bind the client sockets to 127.0.0.1, not the wildcard: a wildcard bind(0) collides with every port any
  // other process holds on any 127.0.0.x, and fails with EADDRINUSE when generators spread over many of them.
  return [
    '-s', HOST, '-a', HOST, '-p', String(o.port), '-d', o.queryFile ?? QUERY_FILE, '-l', String(o.seconds),
    '-c', String(o.clients ?? 8), '-q', String(o.outstanding ?? 500), '-t', String(o.timeoutSec ?? 1),
    ...(o.qps !== undefined ? ['-Q', String(Math.round(o.qps))] : []), ...(o.verbose ? ['-v'] : []),
  ];
}

export async function runDnsperf(o: DnsperfOptions): Promise<DnsperfResult> {
  const args = dnsperfArgs(o);
  const timeoutMs = (o.seconds + (o.timeoutSec ?? 1)) * 1000 + 15_000;
  for (let attempt = 1; ; attempt++) {
    const { code, out } = await runToolStatus('dnsperf', args, { cpus: o.cpus, timeoutMs });
    if (code === 0) return parseDnsperf(out, o.verbose === true, `dnsperf ${args.join(' ')}`);
    // No free local port at that instant (other processes on a shared machine): worth another try.
    if (attempt < 3 && /bind: Address already in use/.test(out)) { await sleep(500); continue; }
    throw new Error(`dnsperf exited ${code}: ${tail(out)}`);
  }
}

export function parseDnsperf(out: string, verbose: boolean, command: string): DnsperfResult {
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`dnsperf output lacks ${re}: ${tail(out)}`);
    return Number(m[1]);
  };
  const sent = num(/Queries sent:\s+(\d+)/), completed = num(/Queries completed:\s+(\d+)/), lost = num(/Queries lost:\s+(\d+)/);
  const noerror = /NOERROR (\d+)/.exec(/Response codes:.*$/m.exec(out)?.[0] ?? '');
  let latenciesUs: number[] | undefined;
  if (verbose) {
    latenciesUs = [];
    for (const m of out.matchAll(/^> \S+ .* (\d+\.\d+)$/gm)) latenciesUs.push(Number(m[1]) * 1e6);
  }
  return {
    sent, completed, lost,
    lostPct: sent > 0 ? (lost / sent) * 100 : 0,
    qps: num(/Queries per second:\s+([\d.]+)/),
    avgLatencyUs: num(/Average Latency \(s\):\s+([\d.]+)/) * 1e6,
    maxLatencyUs: num(/Average Latency \(s\):.*max ([\d.]+)/) * 1e6,
    noerrorPct: completed > 0 && noerror ? (Number(noerror[1]) / completed) * 100 : 0,
    ...(latenciesUs ? { latenciesUs } : {}),
    command,
  };
}

export interface SockperfResult {
  readonly avgUs: number;
  readonly p50Us: number;
  readonly p99Us: number;
  readonly p999Us: number;
  readonly maxUs: number;
  /** Round trips in the measured window (after sockperf's warm-up). */
  readonly roundTrips: number;
  readonly dropped: number;
  readonly command: string;
}

/** `sockperf ping-pong --full-rtt`: one message in flight, so this is latency, not throughput. */
export async function runSockperf(o: { port: number; seconds: number; msgSize?: number; cpus?: string | null }): Promise<SockperfResult> {
  const args = ['ping-pong', '-i', HOST, '-p', String(o.port), '--full-rtt', '-t', String(o.seconds), ...(o.msgSize ? ['-m', String(o.msgSize)] : [])];
  const raw = await runTool('sockperf', args, o.cpus, o.seconds * 1000 + 15_000);
  // eslint-disable-next-line no-control-regex
  const out = raw.replace(/\x1b\[[0-9;]*m/g, '');
  if (/No messages were received/.test(out)) throw new Error(`sockperf: no replies through port ${o.port}`);
  const num = (re: RegExp): number => {
    const m = re.exec(out);
    if (!m) throw new Error(`sockperf output lacks ${re}: ${tail(out)}`);
    return Number(m[1]);
  };
  return {
    avgUs: num(/avg-rtt=([\d.]+)/),
    p50Us: num(/percentile 50\.000 =\s+([\d.]+)/),
    p99Us: num(/percentile 99\.000 =\s+([\d.]+)/),
    p999Us: num(/percentile 99\.900 =\s+([\d.]+)/),
    maxUs: num(/<MAX> observation =\s+([\d.]+)/),
    roundTrips: num(/\[Valid Duration\].*ReceivedMessages=(\d+)/),
    dropped: num(/# dropped messages = (\d+)/),
    command: `sockperf ${args.join(' ')}`,
  };
}

/** Runs a tool to completion (bounded), returning stdout + stderr; throws on a non-zero exit. */
export async function runTool(cmd: string, args: readonly string[], cpus: string | null | undefined, timeoutMs: number): Promise<string> {
  const { code, out } = await runToolStatus(cmd, args, { cpus, timeoutMs });
  if (code !== 0) throw new Error(`${cmd} exited ${code}: ${tail(out)}`);
  return out;
}

/** Runs a tool to completion (killed after timeoutMs), returning its exit code (null if killed) and output. */
export async function runToolStatus(
  cmd: string, args: readonly string[], o: { cpus?: string | null; timeoutMs: number; cwd?: string },
): Promise<{ code: number | null; out: string }> {
  const cpus = o.cpus, timeoutMs = o.timeoutMs;
  const exe = findTool(cmd);
  if (!exe) throw new Error(`${cmd} not installed (run scripts/install-peers.sh)`);
  const [file, argv] = cpus != null ? ['taskset', ['-c', cpus, exe, ...args]] : [exe, [...args]];
  const proc = spawn(file, argv, { stdio: ['ignore', 'pipe', 'pipe'], cwd: o.cwd });
  live.add(proc);
  const chunks: Buffer[] = [];
  proc.stdout!.on('data', (d: Buffer) => chunks.push(d));
  proc.stderr!.on('data', (d: Buffer) => chunks.push(d));
  const timer = setTimeout(() => proc.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) => proc.once('close', (c) => resolve(c)));
  clearTimeout(timer);
  live.delete(proc);
  return { code, out: Buffer.concat(chunks).toString() };
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}
