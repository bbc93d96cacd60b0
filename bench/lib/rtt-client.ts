/**
 * A load client for the balancing benchmarks that the generator library does not cover: its sockets (so its
 * source ports, so the flow -> bucket mapping) live across several runs against the same UDP port, and it
 * reports RTT per time window (by send time) and per flow group, not only over the whole run.
 *
 * It runs in its own process (this file, forked) so its timers do not share an event loop with the sampler.
 * One connected socket per flow; each packet's flow is drawn from the given weights (alias table), so a
 * flow's arrivals are random, not evenly spaced. Payload: u32 flow, u32 seq, f64 send time (us), zeros; any
 * echoing handler returns it. A reply after the drain counts as lost. Bounded: a run ends after
 * durationMs + drainMs.
 */
import { fork, type ChildProcess } from 'node:child_process';
import dgram from 'node:dgram';
import { fileURLToPath } from 'node:url';
import { AliasTable, makeRng } from '../../src/gen/flows.js';
import { socketDrops } from '../../src/metrics/socket-drops.js';

const HERE = fileURLToPath(import.meta.url);
const HEADER_BYTES = 16;

export interface RttClientOptions {
  /** Relative packet rate of every flow (one socket each). */
  readonly weights: readonly number[];
  /** Group of every flow (results are also given per group); default: all in group 0. */
  readonly groups?: readonly number[];
  /** Datagram size, at least 16. */
  readonly sizeBytes: number;
}

export interface RunOptions {
  readonly port: number;
  readonly ratePps: number;
  readonly durationMs: number;
  /** RTT windows by send time. Default 1000. */
  readonly windowMs?: number;
  /** Wait for replies after the last send. Default 2000. */
  readonly drainMs?: number;
  /** Windows from this time on make up the "steady" figures. Default: the second half. */
  readonly steadyFromMs?: number;
  readonly seed?: number;
  /** Poisson arrivals (exponential gaps, the aggregate of many independent sources) instead of even pacing. */
  readonly poisson?: boolean;
  /** This run's relative rates per flow instead of the ones given at start (0 = the flow stays silent). */
  readonly weights?: readonly number[];
}

export interface RttStats { count: number; p50Us: number; p90Us: number; p99Us: number; p999Us: number; maxUs: number }
export interface WindowStats { t: number; sent: number; received: number; p50Us: number | null; p99Us: number | null }
export interface GroupResult {
  sent: number;
  received: number;
  lost: number;
  rtt: RttStats | null;
  steady: (RttStats & { sent: number; received: number }) | null;
  windows: WindowStats[];
}
export interface ClientResult extends GroupResult {
  achievedPps: number;
  /**
   * Where a loss happened on the client's side, so it is not put on flowlb: errors its sockets reported (a send
   * that failed, e.g. ENOBUFS, or an ICMP port unreachable while nothing listened) and replies the kernel dropped at the client's own sockets (receive buffer full; the
   * `drops` column of /proc/net/udp over this run, null where it cannot be read).
   */
  sendErrors: number;
  clientSocketDrops: number | null;
  groups: GroupResult[];
  perFlowSent: number[];
  perFlowReceived: number[];
}

export interface RttClient {
  /** Source ports of the flows, in flow order. */
  readonly ports: readonly number[];
  run(o: RunOptions): Promise<ClientResult>;
  close(): Promise<void>;
}

/** Starts the client process and opens its sockets. */
export async function startRttClient(opts: RttClientOptions): Promise<RttClient> {
  const child: ChildProcess = fork(HERE, ['--rtt-client'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const ports = await new Promise<number[]>((resolve, reject) => {
    child.once('message', (m) => resolve((m as { ports: number[] }).ports));
    child.once('exit', (c) => reject(new Error(`rtt client exited ${c}`)));
    child.send({ cmd: 'open', weights: opts.weights, groups: opts.groups ?? opts.weights.map(() => 0), sizeBytes: Math.max(HEADER_BYTES, opts.sizeBytes) });
  });
  return {
    ports,
    run: (o) => new Promise((resolve) => {
      child.once('message', (m) => resolve(m as ClientResult));
      child.send({ cmd: 'run', ...o });
    }),
    close: () => new Promise((resolve) => {
      if (child.exitCode !== null) { resolve(); return; }
      const kill = setTimeout(() => child.kill('SIGKILL'), 3000);
      child.once('exit', () => { clearTimeout(kill); resolve(); });
      child.send({ cmd: 'close' });
    }),
  };
}

// ---------------------------------------------------------------------------------------------------
// The child.

function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

export function rttStats(values: readonly number[]): RttStats | null {
  if (values.length === 0) return null;
  const s = Float64Array.from(values).sort();
  return { count: s.length, p50Us: quantile(s, 0.5), p90Us: quantile(s, 0.9), p99Us: quantile(s, 0.99), p999Us: quantile(s, 0.999), maxUs: s[s.length - 1]! };
}

interface OpenCmd { cmd: 'open'; weights: number[]; groups: number[]; sizeBytes: number }

async function childMain(): Promise<void> {
  let sockets: dgram.Socket[] = [];
  let groups: number[] = [];
  let table: AliasTable | null = null;
  let sizeBytes = HEADER_BYTES;
  // Rebound per run; the sockets (and their source ports) live until close.
  let onReply: (msg: Buffer) => void = () => {};
  let socketErrors = 0;
  const clientDrops = (): number | null => {
    const d = socketDrops(sockets.map((s) => ({ family: 4 as const, host: '127.0.0.1', port: s.address().port })));
    return d.some((x) => x === null) ? null : d.reduce((a: number, x) => a + x!, 0);
  };
  const usNow = (): number => Number(process.hrtime.bigint() / 1000n);

  const open = async (c: OpenCmd): Promise<void> => {
    groups = c.groups;
    sizeBytes = c.sizeBytes;
    table = new AliasTable(c.weights);
    sockets = [];
    for (let f = 0; f < c.weights.length; f++) {
      const s = dgram.createSocket({ type: 'udp4', recvBufferSize: 1 << 20, sendBufferSize: 1 << 20 });
      s.on('message', (m) => onReply(m));
      // ICMP port unreachable while no server listens, or a failed send: not a reply, not fatal; counted.
      s.on('error', () => { socketErrors++; });
      await new Promise<void>((r) => s.bind({ address: '127.0.0.1', port: 0, exclusive: true }, () => r()));
      sockets.push(s);
    }
    process.send!({ ports: sockets.map((s) => s.address().port) });
  };

  const run = (c: RunOptions): Promise<ClientResult> => new Promise((resolve) => {
    const windowMs = c.windowMs ?? 1000, drainMs = c.drainMs ?? 2000, steadyFromMs = c.steadyFromMs ?? c.durationMs / 2;
    const flows = sockets.length, nGroups = Math.max(...groups) + 1;
    const windows = Math.ceil(c.durationMs / windowMs);
    // Per group and window: sent, received, RTTs.
    const sentW = Array.from({ length: nGroups }, () => new Array<number>(windows).fill(0));
    const recvW = Array.from({ length: nGroups }, () => new Array<number>(windows).fill(0));
    const rttW = Array.from({ length: nGroups }, () => Array.from({ length: windows }, () => [] as number[]));
    const perFlowSent = new Array<number>(flows).fill(0), perFlowReceived = new Array<number>(flows).fill(0);
    const rng = makeRng(c.seed ?? 1);
    const pick = c.weights ? new AliasTable(c.weights) : table!;
    const startUs = usNow() + 50_000;
    const windowUs = windowMs * 1000, slotUs = 1e6 / c.ratePps;
    let sent = 0, connected = 0;
    const errorsBefore = socketErrors, dropsBefore = clientDrops();
    // Poisson arrivals: exponential gaps with mean slotUs (the aggregate of many independent sources);
    // otherwise evenly spaced.
    let nextUs = 0;
    const gapUs = (): number => (c.poisson ? -Math.log(1 - rng()) * slotUs : slotUs);
    onReply = (m) => {
      if (m.length < HEADER_BYTES) return;
      const f = m.readUInt32BE(0);
      const sendUs = m.readDoubleBE(8);
      // Clamped as the send side clamps it: a batch that began before the end may send its last packets a few
      // microseconds after it; they count as sent in the last window, and so must their replies (before, such
      // replies were ignored and a run showed 3-5 packets "lost" in its last second with no drop anywhere).
      const w = Math.min(windows - 1, Math.floor((sendUs - startUs) / windowUs));
      if (f >= flows || w < 0) return;
      const g = groups[f]!;
      recvW[g]![w]!++;
      perFlowReceived[f]!++;
      rttW[g]![w]!.push(usNow() - sendUs);
    };
    const turn = (): void => {
      const now = usNow() - startUs;
      if (now >= c.durationMs * 1000) { setTimeout(finish, drainMs); return; }
      let due = 0;
      while (nextUs <= now && due < 128) { due++; nextUs += gapUs(); }
      const behind = nextUs <= now;
      for (let i = 0; i < due; i++) {
        const f = pick.pick(rng());
        const buf = Buffer.alloc(sizeBytes);
        buf.writeUInt32BE(f, 0);
        buf.writeUInt32BE(perFlowSent[f]!++, 4);
        const t = usNow();
        buf.writeDoubleBE(t, 8);
        sockets[f]!.send(buf);
        sentW[groups[f]!]![Math.min(windows - 1, Math.floor((t - startUs) / windowUs))]!++;
      }
      if (due > 0) sent += due;
      if (behind) setImmediate(turn); else setTimeout(turn, 1);
    };
    const summarise = (sentOf: (w: number) => number, recvOf: (w: number) => number, rttOf: (w: number) => number[]): GroupResult => {
      const steadyFromW = Math.floor(steadyFromMs / windowMs);
      const all: number[] = [], steady: number[] = [];
      let gs = 0, gr = 0, ss = 0, sr = 0;
      const ws: WindowStats[] = [];
      for (let w = 0; w < windows; w++) {
        const r = rttOf(w), sw = sentOf(w), rw = recvOf(w);
        const st = rttStats(r);
        ws.push({ t: (w * windowMs) / 1000, sent: sw, received: rw, p50Us: st?.p50Us ?? null, p99Us: st?.p99Us ?? null });
        for (const x of r) all.push(x);
        gs += sw; gr += rw;
        if (w >= steadyFromW) { for (const x of r) steady.push(x); ss += sw; sr += rw; }
      }
      const st = rttStats(steady);
      return { sent: gs, received: gr, lost: gs - gr, rtt: rttStats(all), steady: st ? { ...st, sent: ss, received: sr } : null, windows: ws };
    };
    const finish = (): void => {
      onReply = () => {};
      const groupResults = Array.from({ length: nGroups }, (_, g) => summarise((w) => sentW[g]![w]!, (w) => recvW[g]![w]!, (w) => rttW[g]![w]!));
      const whole = summarise(
        (w) => sentW.reduce((a, x) => a + x[w]!, 0), (w) => recvW.reduce((a, x) => a + x[w]!, 0), (w) => rttW.flatMap((x) => x[w]!),
      );
      const dropsAfter = clientDrops();
      resolve({
        ...whole, achievedPps: sent / (c.durationMs / 1000), groups: groupResults, perFlowSent, perFlowReceived,
        sendErrors: socketErrors - errorsBefore, clientSocketDrops: dropsBefore === null || dropsAfter === null ? null : dropsAfter - dropsBefore,
      });
    };
    for (const s of sockets) {
      try { s.disconnect(); } catch { /* was not connected */ }
      s.connect(c.port, '127.0.0.1', () => { if (++connected === flows) setTimeout(turn, Math.max(0, (startUs - usNow()) / 1000)); });
    }
  });

  process.on('message', (m: OpenCmd | ({ cmd: 'run' } & RunOptions) | { cmd: 'close' }) => {
    if (m.cmd === 'open') void open(m);
    else if (m.cmd === 'run') void run(m).then((r) => process.send!(r));
    else { for (const s of sockets) s.close(); process.disconnect(); }
  });
  // The benchmark that forked this client went away (killed, crashed): stop sending and exit, no orphan.
  process.on('disconnect', () => process.exit(0));
}

if (process.argv[1] === HERE && process.argv.includes('--rtt-client')) await childMain();
