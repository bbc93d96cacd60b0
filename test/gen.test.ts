/**
 * The traffic generator against real UDP sockets on loopback: an in-test echo, a relay that drops,
 * duplicates and reorders by rule (so the expected counts are exact), pacing, the Zipf split, RTP
 * framing, several sender processes, and option validation. Each run is short (at most about a second).
 */
import dgram from 'node:dgram';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';

import os from 'node:os';

import { runGenCli } from '../src/commands/gen.js';
import type { GenFlags } from '../src/commands/gen.js';
import { openFileLimit } from '../src/gen/address.js';
import { GenError } from '../src/gen/errors.js';
import { AliasTable, flowWeights, makeRng, parseDistribution, shardFlowIds, splitProportional } from '../src/gen/flows.js';
import { Pacer } from '../src/gen/pacer.js';
import { PROBE_HEADER_BYTES, encodeIdentityTrailer, makeTemplate, parseIdentityTrailer, parseRtp, readProbe, writeProbe } from '../src/gen/packet.js';
import { findMaxRate, runGenerator } from '../src/gen/run.js';
import { runSelfTest } from '../src/gen/self-test.js';
import { mergeHistograms, newRttHistogram, encodeHistogram } from '../src/gen/stats.js';

type Family = 4 | 6;
type OnPacket = (msg: Buffer, rinfo: dgram.RemoteInfo, sock: dgram.Socket) => void;

const open: dgram.Socket[] = [];
afterEach(() => {
  for (const s of open.splice(0)) s.close();
});

/** A UDP socket on loopback port 0 that calls `onPacket` for every datagram. */
async function responder(family: Family, onPacket: OnPacket): Promise<{ target: string; sock: dgram.Socket }> {
  const sock = dgram.createSocket(family === 6 ? 'udp6' : 'udp4');
  open.push(sock);
  sock.on('message', (msg, rinfo) => onPacket(msg, rinfo, sock));
  await new Promise<void>((resolve) => sock.bind(0, family === 6 ? '::1' : '127.0.0.1', resolve));
  const port = sock.address().port;
  return { target: family === 6 ? `[::1]:${port}` : `127.0.0.1:${port}`, sock };
}

const echo: OnPacket = (msg, rinfo, sock) => sock.send(msg, rinfo.port, rinfo.address);

describe('packet format', () => {
  it('round-trips the probe header and the identity trailer', () => {
    const buf = makeTemplate(64, 0xdeadbeef, false);
    writeProbe(buf, 0, 7, 42, 123456789012345n);
    expect(readProbe(buf)).toEqual({ runId: 0xdeadbeef, flowId: 7, seq: 42, sendTimeNs: 123456789012345n });
    const reply = Buffer.concat([buf, encodeIdentityTrailer('b-1')]);
    expect(parseIdentityTrailer(reply)).toBe('b-1');
    expect(readProbe(reply)).toEqual(readProbe(buf));
    expect(parseIdentityTrailer(buf)).toBeNull();
    expect(() => makeTemplate(PROBE_HEADER_BYTES - 1, 1, false)).toThrow(RangeError);
  });
});

describe('flow set math', () => {
  it('alias table draws follow Zipf weights (200k draws, 3% tolerance)', () => {
    const w = flowWeights(10, parseDistribution('zipf:1'));
    const table = new AliasTable(w);
    const rng = makeRng(12345);
    const hits = new Array<number>(10).fill(0);
    const draws = 200_000;
    for (let i = 0; i < draws; i++) hits[table.pick(rng())]!++;
    const sum = w.reduce((a, b) => a + b, 0);
    for (let i = 0; i < 10; i++) {
      const expected = (draws * w[i]!) / sum;
      // flow 9's expected count is ~6800, one sigma ~1.2%: 3% is more than 2.5 sigma for every flow.
      expect(Math.abs(hits[i]! - expected) / expected).toBeLessThan(0.03);
    }
    expect(hits.indexOf(Math.max(...hits))).toBe(0);
  });

  it('splits flows and counts over processes exactly', () => {
    const all = [0, 1, 2].flatMap((i) => Array.from(shardFlowIds(10, i, 3)));
    expect(all.sort((a, b) => a - b)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    expect(splitProportional(10, [1, 1, 1]).reduce((a, b) => a + b)).toBe(10);
    expect(splitProportional(7, [3, 1])).toEqual([5, 2]);
  });

  it('pacer: slot k is due at k/rate and the deadline bounds the slots', () => {
    const p = new Pacer(2000, Infinity, 500e6);
    expect(p.slotLimit).toBe(1000);
    expect(p.dueAt(0)).toBe(1);
    expect(p.dueAt(499_999)).toBe(1);
    expect(p.dueAt(500_000)).toBe(2);
    expect(p.dueAt(10e9)).toBe(1000);
    expect(new Pacer(1000, 10, Infinity).slotLimit).toBe(10);
  });

  it('merges encoded RTT histograms', () => {
    const a = newRttHistogram();
    const b = newRttHistogram();
    for (let i = 1; i <= 100; i++) a.recordValue(i);
    for (let i = 101; i <= 200; i++) b.recordValue(i);
    const m = mergeHistograms([encodeHistogram(a), encodeHistogram(b)]);
    expect(m.totalCount).toBe(200);
    expect(m.maxValue).toBeGreaterThanOrEqual(200);
  });
});

describe('generator against an echo', () => {
  it.each([4, 6] as const)('IPv%i: 50 flows x 10 packets all come back in order, RTT percentiles present', async (family) => {
    const { target } = await responder(family, echo);
    const r = await runGenerator({ target, flows: 50, count: 500, ratePps: 2500, drainMs: 2000 });
    expect(r).toMatchObject({ sent: 500, received: 500, lost: 0, lossPct: 0, reordered: 0, duplicated: 0, invalid: 0, stoppedBy: 'count' });
    expect(r.perFlowSent).toEqual({ min: 10, max: 10 });
    expect(r.perFlowReceived).toEqual({ min: 10, max: 10 });
    expect(r.rtt).not.toBeNull();
    const rtt = r.rtt!;
    expect(rtt.count).toBe(500);
    expect(rtt.p50).toBeGreaterThan(0);
    expect(rtt.p50).toBeLessThanOrEqual(rtt.p90);
    expect(rtt.p90).toBeLessThanOrEqual(rtt.p99);
    expect(rtt.p99).toBeLessThanOrEqual(rtt.p999);
    expect(rtt.p999).toBeLessThanOrEqual(rtt.max);
  });

  it('uses distinct source ports, spread over --src-addrs addresses', async () => {
    const tuples = new Set<string>();
    const addrs = new Set<string>();
    const { target } = await responder(4, (msg, rinfo, sock) => {
      tuples.add(`${rinfo.address}:${rinfo.port}`);
      addrs.add(rinfo.address);
      sock.send(msg, rinfo.port, rinfo.address);
    });
    const r = await runGenerator({ target, flows: 12, srcAddrs: 4, count: 48, ratePps: 2000 });
    expect(r.received).toBe(48);
    expect(tuples.size).toBe(12);
    expect([...addrs].sort()).toEqual(['127.0.0.1', '127.0.0.2', '127.0.0.3', '127.0.0.4']);
  });
});

describe('generator against a faulty relay', () => {
  it('counts exactly the injected losses, duplicates and reorders', async () => {
    // Per flow, by sequence number: drop x2, duplicate x5, hold x7 until x8 has been answered.
    const held = new Map<number, { msg: Buffer; rinfo: dgram.RemoteInfo }>();
    const injected = { dropped: 0, duplicated: 0, reordered: 0 };
    const { target } = await responder(4, (msg, rinfo, sock) => {
      const p = readProbe(msg)!;
      const reply = (m: Buffer): void => void sock.send(m, rinfo.port, rinfo.address);
      switch (p.seq % 10) {
        case 2:
          injected.dropped++;
          return;
        case 5:
          injected.duplicated++;
          reply(msg);
          reply(msg);
          return;
        case 7:
          held.set(p.flowId, { msg, rinfo });
          return;
        case 8: {
          reply(msg);
          const h = held.get(p.flowId);
          if (h) {
            held.delete(p.flowId);
            injected.reordered++;
            reply(h.msg);
          }
          return;
        }
        default:
          reply(msg);
      }
    });
    const r = await runGenerator({ target, flows: 50, count: 1000, ratePps: 2500, drainMs: 300 });
    expect(injected).toEqual({ dropped: 100, duplicated: 100, reordered: 100 });
    expect(held.size).toBe(0);
    expect(r).toMatchObject({ sent: 1000, received: 900, lost: 100, duplicated: 100, reordered: 100, invalid: 0 });
    expect(r.lossPct).toBeCloseTo(10, 10);
    expect(r.perFlowReceived).toEqual({ min: 18, max: 18 });
  });

  it('ignores datagrams that are not replies of this run', async () => {
    const { target } = await responder(4, (msg, rinfo, sock) => {
      // Noise first: the drain ends at the last real reply, so noise after it would go unseen.
      sock.send(Buffer.from('not a probe at all, just noise'), rinfo.port, rinfo.address);
      sock.send(msg, rinfo.port, rinfo.address);
    });
    const r = await runGenerator({ target, flows: 4, count: 40, ratePps: 2000 });
    expect(r).toMatchObject({ sent: 40, received: 40, lost: 0, invalid: 40, duplicated: 0 });
  });
});

describe('pacing', () => {
  it('2000 pps, count 2000: exact count, about 1 s', async () => {
    // Tolerance: the count is exact; elapsed may only be late by timer slop (a few ms a turn on a busy
    // 2-core machine), so the window is [0.95 s, 2 s] wall and the slot-based achieved rate within 5%.
    const { target } = await responder(4, echo);
    const t0 = performance.now();
    const r = await runGenerator({ target, flows: 8, count: 2000, ratePps: 2000 });
    const wallMs = performance.now() - t0;
    expect(r.sent).toBe(2000);
    expect(r.received).toBe(2000);
    expect(r.stoppedBy).toBe('count');
    expect(r.durationMs).toBeGreaterThanOrEqual(950);
    expect(wallMs).toBeGreaterThanOrEqual(950);
    expect(wallMs).toBeLessThan(2000);
    expect(Math.abs(r.achievedRate - 2000) / 2000).toBeLessThan(0.05);
    expect(r.generatorBound).toBe(false);
  });

  it('flags a run the generator could not keep up with', async () => {
    const { target } = await responder(4, () => undefined);
    const r = await runGenerator({ target, flows: 4, durationMs: 100, ratePps: 10_000_000, expectReplies: false });
    expect(r.generatorBound).toBe(true);
    expect(r.achievedRate).toBeLessThan(r.offeredRate * 0.97);
    expect(r.lost).toBeNull();
    expect(r.lossPct).toBeNull();
  });

  it('duration 0.5 s at 2000 pps sends exactly 1000', async () => {
    const { target } = await responder(4, echo);
    const r = await runGenerator({ target, flows: 4, durationMs: 500, ratePps: 2000 });
    expect(r.sent).toBe(1000);
    expect(r.stoppedBy).toBe('duration');
    expect(Math.abs(r.achievedRate - 2000) / 2000).toBeLessThan(0.05);
  });

  it('an abort ends the send phase early and still reports', async () => {
    const { target } = await responder(4, echo);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 150);
    const t0 = performance.now();
    const r = await runGenerator({ target, flows: 4, durationMs: 10_000, ratePps: 1000, signal: ac.signal });
    expect(performance.now() - t0).toBeLessThan(3000);
    expect(r.stoppedBy).toBe('abort');
    expect(r.sent).toBeGreaterThan(50);
    expect(r.sent).toBeLessThan(1000);
    expect(r.received).toBe(r.sent);
  });
});

describe('zipf distribution', () => {
  it('flow 0 gets the largest share and shares follow 1/(i+1)', async () => {
    const { target } = await responder(4, echo);
    const r = await runGenerator({ target, flows: 10, count: 5000, ratePps: 5_000, distribution: 'zipf:1', includePerFlow: true, socketBufferBytes: 1 << 20 });
    const sent = r.flowSent!;
    expect(sent.reduce((a, b) => a + b, 0)).toBe(5000);
    // The echo shares this process's event loop; on a busy machine the kernel may drop a few replies. The
    // distribution is about what was sent; the replies only have to come back for (nearly) every packet.
    expect(r.received).toBeGreaterThanOrEqual(4900);
    expect(Math.max(...sent)).toBe(sent[0]);
    // flow 9 expects ~171 packets (sigma ~7%); the draw is seeded, so this is deterministic, not flaky.
    for (let i = 1; i < 10; i++) expect(Math.abs(sent[i]! / sent[0]! - 1 / (i + 1)) * (i + 1)).toBeLessThan(0.25);
  });
});

describe('RTP mode', () => {
  it('sends RTP v2 PCMU with per-stream SSRC, seq +1, timestamp +160, and still measures', async () => {
    const byPort = new Map<number, Buffer[]>();
    const { target } = await responder(4, (msg, rinfo, sock) => {
      const list = byPort.get(rinfo.port) ?? [];
      list.push(Buffer.from(msg));
      byPort.set(rinfo.port, list);
      sock.send(msg, rinfo.port, rinfo.address);
    });
    // Default rate: 50 pps per stream, so 3 streams x 10 packets take 0.2 s.
    const r = await runGenerator({ target, flows: 3, count: 30, rtp: true });
    expect(r).toMatchObject({ offeredRate: 150, sent: 30, received: 30, lost: 0, datagramBytes: 172, rtp: true });
    expect(byPort.size).toBe(3);
    const ssrcs = new Set<number>();
    for (const packets of byPort.values()) {
      expect(packets).toHaveLength(10);
      const hs = packets.map((p) => parseRtp(p)!);
      const flowIds = new Set(packets.map((p) => readProbe(p, hs[0]!.payloadOffset)!.flowId));
      expect(flowIds.size).toBe(1);
      hs.forEach((h, k) => {
        expect(h).toMatchObject({ version: 2, payloadType: 0, padding: false, extension: false, csrcCount: 0, marker: k === 0, ssrc: hs[0]!.ssrc });
        expect(packets[k]!.length - h.payloadOffset).toBe(160);
        if (k > 0) {
          expect(h.seq).toBe((hs[k - 1]!.seq + 1) & 0xffff);
          expect(h.timestamp).toBe((hs[k - 1]!.timestamp + 160) >>> 0);
        }
      });
      ssrcs.add(hs[0]!.ssrc);
    }
    expect(ssrcs.size).toBe(3);
  });
});

describe('findMaxRate', () => {
  // minAchievedRatio is lowered so that these test the search, not how punctual timers are on a busy machine.
  it('doubles up to maxRate when every trial passes', async () => {
    const { target } = await responder(4, echo);
    const r = await findMaxRate({ target, flows: 4, drainMs: 200 }, { startRate: 500, maxRate: 2000, trialMs: 250, maxTrials: 5, pauseMs: 10, minAchievedRatio: 0.5 });
    expect(r.trials.map((t) => t.ratePps)).toEqual([500, 1000, 2000]);
    expect(r).toMatchObject({ rate: 2000, limitedBy: 'maxRate' });
    expect(r.result?.lost).toBe(0);
  });

  it('reports 0 when even the lowest rate loses too much', async () => {
    let n = 0;
    const { target } = await responder(4, (msg, rinfo, sock) => {
      if (++n % 20 !== 0) sock.send(msg, rinfo.port, rinfo.address); // 5% loss
    });
    const r = await findMaxRate({ target, flows: 4, drainMs: 200 }, { startRate: 400, minRate: 200, trialMs: 250, maxTrials: 5, pauseMs: 10, lossPct: 0.1, minAchievedRatio: 0.5 });
    expect(r.rate).toBe(0);
    expect(r.result).toBeNull();
    expect(r.limitedBy).toBe('loss');
    expect(r.trials.map((t) => t.ratePps)).toEqual([400, 200]);
  });
});

const here = path.dirname(fileURLToPath(import.meta.url));
const hasDist = fs.existsSync(path.join(here, '..', 'dist', 'src', 'gen', 'shard-main.js'));

describe('several sender processes', () => {
  // The children run compiled code (dist/); `npm test` builds first.
  it.skipIf(!hasDist)('splits flows over 2 processes and merges counts and histograms', async () => {
    const { target } = await responder(4, echo);
    const r = await runGenerator({ target, flows: 10, count: 400, ratePps: 2000, procs: 2, includePerFlow: true });
    expect(r).toMatchObject({ procs: 2, sent: 400, received: 400, lost: 0, reordered: 0, duplicated: 0 });
    expect(r.rtt?.count).toBe(400);
    expect(r.flowSent).toEqual(new Array(10).fill(40));
  });
});

describe('self-test', () => {
  it.skipIf(!hasDist)('measures against a sink and an echo in child processes (tiny bounds)', async () => {
    const r = await runSelfTest({ flows: 4, trialMs: 200, maxTrials: 2, maxRate: 2000 });
    expect(r.sendOnly.sent).toBeGreaterThan(0);
    expect(r.sendCeilingPps).toBeGreaterThan(0);
    expect(r.echoSearch.trials.length).toBeGreaterThanOrEqual(1);
    expect(r.echoSearch.trials.length).toBeLessThanOrEqual(2);
    expect(r.echoStats?.received).toBeGreaterThan(0);
  });
});

describe('CLI', () => {
  it('runGenCli prints a summary and writes --json', async () => {
    const { target } = await responder(4, echo);
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-gen-'));
    const out: string[] = [];
    try {
      await runGenCli({ target, flows: 5, count: 50, rate: 1000, json: path.join(dir, 'r.json'), progress: false }, { out: (l) => out.push(l), err: (l) => out.push(l) });
      const json = JSON.parse(fs.readFileSync(path.join(dir, 'r.json'), 'utf8'));
      expect(json).toMatchObject({ sent: 50, received: 50, lost: 0, lossPct: 0, reordered: 0, duplicated: 0 });
      expect(Object.keys(json.rtt)).toEqual(expect.arrayContaining(['p50', 'p90', 'p99', 'p999', 'max']));
      expect(out.join('\n')).toMatch(/sent 50, received 50, lost 0/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it.runIf(hasDist)('--progress with --procs 2: one line per second, at the offered rate', async () => {
    // Each sender process reports on its own clock; a line per report put a second line a few ms after the first,
    // whose rate over those ms read millions of pps.
    const { target } = await responder(4, echo);
    const lines: string[] = [];
    await runGenCli({ target, flows: 8, rate: 2000, duration: 3.4, procs: 2, progress: true }, { out: () => undefined, err: (l) => lines.push(l) });
    const rates = lines.flatMap((l) => { const m = /sent \d+ \((\d+) pps\)/.exec(l); return m ? [Number(m[1])] : []; });
    expect(rates.length).toBeGreaterThanOrEqual(2);
    expect(rates.length).toBeLessThanOrEqual(4);
    for (const r of rates) expect(r).toBeLessThan(2000 * 3);
  });

  it('requires --target', async () => {
    await expect(runGenCli({}, { out: () => undefined, err: () => undefined })).rejects.toMatchObject({ code: 'ERR_GEN_OPTION' });
  });

  it('rejects the search flags (--loss-pct, --max-rate, --max-trials, --trial) without --find-max or --self-test', async () => {
    // A plain run ignored them: `--loss-pct 0.1` read as a pass/fail threshold and was not one.
    const { target } = await responder(4, echo);
    const silent = { out: () => undefined, err: () => undefined };
    const plain = { target, flows: 2, count: 4, rate: 1000, progress: false };
    for (const [flags, flag] of [
      [{ 'loss-pct': 0.1 }, '--loss-pct'],
      [{ 'max-rate': 5000 }, '--max-rate'],
      [{ 'max-trials': 3 }, '--max-trials'],
      [{ trial: 1 }, '--trial'],
    ] as const) {
      await expect(runGenCli({ ...plain, ...flags }, silent), flag).rejects.toMatchObject({
        code: 'ERR_GEN_OPTION',
        message: `${flag} applies only with --find-max or --self-test`,
      });
    }
  });

  it('rejects with --self-test the flags it does not read (it sends its own trials), before starting a child', async () => {
    const silent = { out: () => undefined, err: () => undefined };
    for (const [flags, flag] of [
      [{ rate: 5000 }, '--rate'],
      [{ duration: 3 }, '--duration'],
      [{ rtp: true }, '--rtp'],
      [{ 'find-max': true }, '--find-max'],
      [{ replies: false }, '--no-replies'],
    ] as const) {
      await expect(runGenCli({ 'self-test': true, progress: false, ...flags }, silent), flag).rejects.toMatchObject({
        code: 'ERR_GEN_OPTION',
        message: `${flag} has no effect with --self-test (it reads --flows, --size, --procs, --target's address family and the search flags)`,
      });
    }
  });

  it('names a bad option by the flag the user typed, in its unit, never by an internal field', async () => {
    // They said "ratePps (--rate) must be ...", "durationMs (--duration x 1000) ... got -3000", and --trial 0 was
    // blamed on --duration; --max-rate 0 said "findMaxRate: need 0 < minRate <= maxRate".
    const silent = { out: () => undefined, err: () => undefined };
    const t = '127.0.0.1:9';
    const cases: [GenFlags, string][] = [
      [{ target: t, rate: -1 }, '--rate must be a number in [0.001, 100000000], got -1'],
      [{ target: t, flows: 0 }, '--flows must be an integer in [1, 10000000], got 0'],
      [{ target: t, count: 1.5 }, '--count must be an integer in [1, 9007199254740991], got 1.5'],
      [{ target: t, duration: -3 }, '--duration must be a number in [0.001, 86400] seconds, got -3'],
      [{ target: t, size: 10 }, '--size must be an integer in [24, 65507] bytes, got 10'],
      [{ target: t, rtp: true, size: 10 }, '--size must be an integer in [24, 65495] bytes (the RTP payload, with --rtp), got 10'],
      [{ target: t, 'src-addrs': 300 }, '--src-addrs must be an integer in [1, 254], got 300'],
      [{ target: '[::1]:9', 'src-addrs': 2 }, '--src-addrs must be 1 with an IPv6 target (it sends from ::1 only), got 2'],
      [{ target: t, procs: 0 }, '--procs must be an integer in [1, 64], got 0'],
      [{ target: t, procs: 5, flows: 2 }, '--procs 5 cannot exceed --flows 2: each process owns whole flows'],
      [{ target: t, 'rtp-pt': 200 }, '--rtp-pt must be an integer in [0, 127], got 200'],
      [{ target: t, 'rtp-ts-step': -1 }, '--rtp-ts-step must be an integer in [0, 4294967295], got -1'],
      [{ target: t, drain: -1 }, '--drain must be a number in [0, 600000] ms, got -1'],
      [{ target: t, burst: 0 }, '--burst must be an integer in [1, 1000000], got 0'],
      [{ target: t, seed: -1 }, '--seed must be an integer in [0, 4294967295], got -1'],
      [{ target: t, sockbuf: 10 }, '--sockbuf must be an integer in [1024, 1073741824] bytes, got 10'],
      [{ target: t, dist: 'pareto' }, '--dist: expected "uniform" or "zipf:<s>" with 0 <= s <= 10, got "pareto"'],
      [{ target: 'nohost:9' }, '--target: "nohost" is not an IP address (names other than localhost are not resolved)'],
      [{ target: t, 'find-max': true, 'max-rate': 0 }, '--max-rate must be a number in [10, 100000000], got 0'],
      [{ target: t, 'find-max': true, 'max-trials': 0 }, '--max-trials must be an integer in [1, 1000], got 0'],
      [{ target: t, 'find-max': true, trial: 0 }, '--trial must be a number in [0.001, 86400] seconds, got 0'],
      [{ target: t, 'find-max': true, rate: 0 }, '--rate must be a number in [0.001, 100000000], got 0'],
      [{ 'self-test': true, flows: 0 }, '--flows must be an integer in [1, 10000000], got 0'],
      [{ 'self-test': true, 'max-rate': 5 }, '--max-rate must be a number in [10, 100000000], got 5'],
    ];
    for (const [flags, message] of cases) {
      const err = await runGenCli({ progress: false, ...flags }, silent).then(() => null, (e: unknown) => e);
      expect(err, JSON.stringify(flags)).toBeInstanceOf(GenError);
      expect({ flags, code: (err as GenError).code, message: (err as GenError).message }).toEqual({ flags, code: 'ERR_GEN_OPTION', message });
    }
    // The library names its own fields.
    await expect(runGenerator({ target: t, ratePps: -1 })).rejects.toThrow(/^ratePps must be a number in \[0\.001, 100000000\], got -1$/);
    await expect(runGenerator({ target: t, durationMs: -3000 })).rejects.toThrow(/^durationMs must be a number in \[1, 86400000\], got -3000$/);
  });
});

describe('options', () => {
  const bad = async (o: Parameters<typeof runGenerator>[0], code: string): Promise<void> => {
    const err = await runGenerator(o).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(GenError);
    expect((err as GenError).code).toBe(code);
  };
  it('rejects bad values with stable codes', async () => {
    await bad({ target: '127.0.0.1:9', sizeBytes: 10 }, 'ERR_GEN_OPTION');
    await bad({ target: 'nohost:9' }, 'ERR_GEN_OPTION');
    await bad({ target: '127.0.0.1:9', flows: 2, procs: 3 }, 'ERR_GEN_OPTION');
    await bad({ target: '[::1]:9', srcAddrs: 2 }, 'ERR_GEN_OPTION');
    await bad({ target: '127.0.0.1:9', distribution: 'pareto' }, 'ERR_GEN_OPTION');
    const limit = openFileLimit();
    if (limit !== null && limit < 1_000_000) await bad({ target: '127.0.0.1:9', flows: limit + 1 }, 'ERR_GEN_RESOURCE');
  });
});
