/**
 * The generator's own ceiling on this machine, so a benchmark result is never mistaken for flowlb's when
 * it is the generator's. Two measurements against a backend simulator in a child process:
 * 1. send ceiling: offer far more than can be sent to a sink, report what was achieved;
 * 2. echo ceiling: findMaxRate against a plain echo (no identity, no cost) at <= lossPct loss.
 * The echo is Node too, so (2) is the rate a Node echo and this generator sustain together on this
 * machine; anything a system under test reaches close to (2) is bounded by the harness, not by itself.
 */
import { fork } from 'node:child_process';
import { compiledSibling, formatHostPort } from './address.js';
import type { BackendMode, BackendStats } from './backend.js';
import { GenError } from './errors.js';
import { findMaxRate, runGenerator } from './run.js';
import type { FindMaxResult, GenResult, TrialRecord } from './run.js';
import { resolveGenOptions } from './options.js';
import type { OptionNames } from './options.js';

const CHILD_START_TIMEOUT_MS = 10_000;
/**
 * Receive/send buffer of the self-test's echo: 4 MiB (Linux caps it at net.core.rmem_max). With the
 * default ~208 KB a loopback echo loses packets whenever it is descheduled for ~10 ms on a shared
 * machine, which would measure the scheduler, not the generator.
 */
export const SELF_TEST_SOCKET_BUFFER_BYTES = 4 * 1024 * 1024;

export interface SelfTestOptions {
  /** 4: 127.0.0.1, 6: ::1. Default 4. */
  family?: 4 | 6;
  flows?: number;
  sizeBytes?: number;
  procs?: number;
  trialMs?: number;
  maxTrials?: number;
  lossPct?: number;
  maxRate?: number;
  /** How errors name a bad flows/sizeBytes/procs (see GenOptions.optionNames). */
  optionNames?: OptionNames;
  onTrial?: (t: TrialRecord) => void;
  onPhase?: (text: string) => void;
}

export interface SelfTestResult {
  /** Packets/s the generator sent when offered `maxRate` against a sink (send side alone). */
  sendCeilingPps: number;
  sendOnly: GenResult;
  /** Highest rate with <= lossPct loss against a plain Node echo in another process. */
  echoMaxPps: number;
  echoSearch: FindMaxResult;
  echoStats: BackendStats | null;
}

interface ChildBackend {
  address: string;
  port: number;
  stop(): Promise<BackendStats | null>;
}

/** Starts a backend simulator in a child process. */
export async function startBackendChild(mode: BackendMode, family: 4 | 6, identity = false, socketBufferBytes = SELF_TEST_SOCKET_BUFFER_BYTES): Promise<ChildBackend> {
  const child = fork(compiledSibling(import.meta.url, 'backend-main'), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'json' });
  const listening = await new Promise<{ address: string; port: number }>((resolve, reject) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new GenError('ERR_GEN_CHILD', 'backend child did not start in time'));
    }, CHILD_START_TIMEOUT_MS);
    child.on('message', (m: { cmd: string; address?: string; port?: number; message?: string }) => {
      if (m.cmd === 'listening') {
        clearTimeout(t);
        resolve({ address: m.address!, port: m.port! });
      } else if (m.cmd === 'error') {
        clearTimeout(t);
        child.kill('SIGKILL');
        reject(new GenError('ERR_GEN_CHILD', `backend child: ${m.message}`));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(t);
      reject(new GenError('ERR_GEN_CHILD', `backend child exited with ${code}`));
    });
    child.send({ cmd: 'start', opts: { listen: family === 6 ? '[::1]:0' : '127.0.0.1:0', mode, identity, id: 'self-test', socketBufferBytes } });
  });
  return {
    ...listening,
    stop: () =>
      new Promise((resolve) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          resolve(null);
        }, 5000);
        child.on('message', (m: { cmd: string; stats?: BackendStats }) => {
          if (m.cmd !== 'stats') return;
          clearTimeout(t);
          child.disconnect();
          resolve(m.stats ?? null);
        });
        child.send({ cmd: 'stop' });
      }),
  };
}

export async function runSelfTest(o: SelfTestOptions = {}): Promise<SelfTestResult> {
  const family = o.family ?? 4;
  const base = { flows: o.flows ?? 16, sizeBytes: o.sizeBytes ?? 64, procs: o.procs ?? 1, drainMs: 500, ...(o.optionNames ? { optionNames: o.optionNames } : {}) };
  const trialMs = o.trialMs ?? 1000;
  const maxRate = o.maxRate ?? 1_000_000;
  // Bad flows, sizeBytes or procs fail now, before a child starts (the target only gives the family here).
  resolveGenOptions({ ...base, target: family === 6 ? '[::1]:9' : '127.0.0.1:9' });

  o.onPhase?.(`send ceiling: offering ${maxRate} pps to a sink for ${trialMs} ms`);
  const sink = await startBackendChild('sink', family);
  let sendOnly: GenResult;
  try {
    sendOnly = await runGenerator({ ...base, target: formatHostPort({ host: sink.address, port: sink.port }), ratePps: maxRate, durationMs: trialMs, expectReplies: false });
  } finally {
    await sink.stop();
  }

  // Start the search below the send ceiling: above it every trial fails on the generator anyway.
  const startRate = Math.max(1000, Math.round(sendOnly.achievedRate / 8));
  o.onPhase?.(`echo ceiling: searching from ${startRate} pps, trials of ${trialMs} ms, loss <= ${o.lossPct ?? 0.1}%`);
  const echo = await startBackendChild('echo', family);
  let echoSearch: FindMaxResult;
  let echoStats: BackendStats | null;
  try {
    echoSearch = await findMaxRate(
      { ...base, target: formatHostPort({ host: echo.address, port: echo.port }) },
      { lossPct: o.lossPct ?? 0.1, startRate, maxRate: Math.max(startRate, Math.round(sendOnly.achievedRate)), trialMs, maxTrials: o.maxTrials ?? 8, ...(o.onTrial ? { onTrial: o.onTrial } : {}) },
    );
  } finally {
    echoStats = await echo.stop();
  }
  return { sendCeilingPps: sendOnly.achievedRate, sendOnly, echoMaxPps: echoSearch.rate, echoSearch, echoStats };
}
