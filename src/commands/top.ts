/**
 * `flowlb top`: a live terminal view of a running flowlb, from its /status document once a second. Drawing is
 * metrics/top-view.ts (pure); this file fetches, owns the terminal (alternate screen, raw stdin) and gives it
 * back however the view ends: q, Ctrl-C, SIGINT/SIGTERM/SIGHUP, or an error.
 *
 * Unreachable at start: one line and exit 1. Unreachable later: the last view stays under a DISCONNECTED line
 * and top keeps asking every interval, so it resumes by itself when the service is back.
 */
import http from 'node:http';
import https from 'node:https';
import type { CommandModule, Options } from 'yargs';

import { DEFAULT_HTTP, parseDuration } from '../config.js';
import { ConfigError, FlowlbError } from '../errors.js';
import { parseStatus, renderTop, type TopSample, type TopStatus } from '../metrics/top-view.js';

export const DEFAULT_TOP_INTERVAL_MS = 1000;
/** A /status answer slower than this (or than the interval, if shorter) counts as unreachable. */
const FETCH_TIMEOUT_MS = 2000;
/** Width used when stdout is not a terminal. */
const PIPE_WIDTH = 120;

// Terminal control: alternate screen (the user's scrollback comes back untouched), cursor, home, clears.
const ENTER_ALT_SCREEN = '\x1b[?1049h';
const LEAVE_ALT_SCREEN = '\x1b[?1049l';
const HIDE_CURSOR = '\x1b[?25l';
const SHOW_CURSOR = '\x1b[?25h';
const HOME = '\x1b[H';
const CLEAR_LINE_RIGHT = '\x1b[K';
const CLEAR_BELOW = '\x1b[J';
const KEY_CTRL_C = '\x03';
const KEY_CTRL_D = '\x04';

export interface TopFlags {
  url?: string;
  interval?: string;
  once?: boolean;
}

export const TOP_OPTIONS = {
  url: {
    type: 'string', requiresArg: true, describe: 'Base URL of flowlb\'s status listener (serve --http)', defaultDescription: `http://${DEFAULT_HTTP}`,
  },
  interval: { type: 'string', requiresArg: true, describe: 'Time between refreshes (500ms, 2s, ...)', defaultDescription: '1s' },
  once: { type: 'boolean', describe: 'Print one view (rates over one interval) and exit', defaultDescription: 'false' },
} satisfies Record<string, Options>;

/** `127.0.0.1:9464`, `http://host:port/` or `http://host:port/status` -> the /status URL. */
export function statusUrl(text: string): URL {
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `http://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new ConfigError(`--url must be an http(s) URL such as http://${DEFAULT_HTTP}, got ${JSON.stringify(text)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(`--url must be an http(s) URL such as http://${DEFAULT_HTTP}, got ${JSON.stringify(text)}`);
  }
  url.pathname = url.pathname.replace(/\/+$/, '').replace(/\/status$/, '') + '/status';
  url.search = '';
  url.hash = '';
  return url;
}

function describeFetchError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e?.code === 'ECONNREFUSED') return 'connection refused';
  if (e?.code === 'ENOTFOUND') return 'host not found';
  if (e?.code === 'ETIMEDOUT') return 'no answer in time';
  if (e?.code === 'ECONNRESET') return 'connection reset';
  return e?.code ? `${e.code}: ${e.message}` : String(e?.message ?? err);
}

/** GETs /status with a fresh connection (no keep-alive pool, so nothing keeps the process alive after q). */
export function fetchStatus(url: URL, timeoutMs: number): Promise<TopStatus> {
  const lib = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.get(url, { agent: false, timeout: timeoutMs, headers: { accept: 'application/json', connection: 'close' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => { body += chunk; });
      res.on('error', reject);
      res.on('end', () => {
        if (res.statusCode !== 200) { reject(new Error(`HTTP ${res.statusCode} from ${url.href}`)); return; }
        let json: unknown;
        try { json = JSON.parse(body); } catch { reject(new Error(`${url.href} did not answer JSON`)); return; }
        const status = parseStatus(json);
        if (status === null) reject(new Error(`${url.href} is not a flowlb status document`));
        else resolve(status);
      });
    });
    req.on('timeout', () => req.destroy(Object.assign(new Error('no answer in time'), { code: 'ETIMEDOUT' })));
    req.on('error', reject);
  });
}

/** Runs the view until the user quits; resolves then (the terminal restored). */
export async function runTop(flags: TopFlags): Promise<void> {
  const url = statusUrl(flags.url ?? `http://${DEFAULT_HTTP}`);
  const intervalMs = flags.interval === undefined ? DEFAULT_TOP_INTERVAL_MS : parseDuration(flags.interval, '--interval');
  const timeoutMs = Math.min(FETCH_TIMEOUT_MS, Math.max(200, intervalMs));
  const shownUrl = url.href.replace(/\/status$/, '');

  let first: TopStatus;
  try {
    first = await fetchStatus(url, timeoutMs);
  } catch (err) {
    throw new FlowlbError('ERR_TOP_UNREACHABLE', `cannot reach flowlb at ${url.href}: ${describeFetchError(err)}`);
  }

  const out = process.stdout;
  const interactive = out.isTTY === true && !flags.once;
  let previous: TopSample | null = null;
  let current: TopSample = { status: first, atMs: performance.now() };
  let disconnected: { error: string; sinceMs: number } | null = null;

  const width = (): number => (out.isTTY ? out.columns || 80 : PIPE_WIDTH);
  const frame = (): string[] =>
    renderTop(current, previous, width(), { url: shownUrl, disconnected, nowMs: performance.now() });

  if (flags.once) {
    // Rates need two samples: take the second one an interval later.
    await new Promise((r) => setTimeout(r, intervalMs));
    previous = current;
    current = { status: await fetchStatus(url, timeoutMs), atMs: performance.now() };
    out.write(frame().join('\n') + '\n');
    return;
  }

  const draw = (): void => {
    const lines = frame();
    if (interactive) {
      const rows = out.rows || lines.length;
      out.write(HOME + lines.slice(0, rows).map((l) => l + CLEAR_LINE_RIGHT).join('\r\n') + CLEAR_BELOW);
    } else {
      out.write(lines.join('\n') + '\n\n');
    }
  };

  await new Promise<void>((resolve) => {
    const stdin = process.stdin;
    const rawInput = interactive && stdin.isTTY === true;
    let timer: NodeJS.Timeout | null = null;
    let done = false;

    const onKey = (data: Buffer | string): void => {
      const text = data.toString();
      if (text.includes('q') || text.includes('Q') || text.includes(KEY_CTRL_C) || text.includes(KEY_CTRL_D)) quit();
    };
    const onSignal = (): void => quit();
    const onResize = (): void => draw();

    function restoreTerminal(): void {
      if (rawInput) {
        stdin.off('data', onKey);
        try { stdin.setRawMode(false); } catch { /* terminal gone */ }
        stdin.pause();
      }
      if (interactive) {
        out.off('resize', onResize);
        out.write(SHOW_CURSOR + LEAVE_ALT_SCREEN);
      }
    }

    function quit(): void {
      if (done) return;
      done = true;
      if (timer) clearTimeout(timer);
      for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.off(sig, onSignal);
      process.off('exit', restoreTerminal);
      restoreTerminal();
      resolve();
    }

    async function tick(): Promise<void> {
      timer = null;
      try {
        const status = await fetchStatus(url, timeoutMs);
        if (done) return;
        // After a gap, rates over the gap would mix a restart's reset counters: start rates afresh.
        previous = disconnected ? null : current;
        current = { status, atMs: performance.now() };
        disconnected = null;
      } catch (err) {
        if (done) return;
        disconnected ??= { error: describeFetchError(err), sinceMs: performance.now() };
        disconnected.error = describeFetchError(err);
      }
      draw();
      timer = setTimeout(() => { void tick(); }, intervalMs);
    }

    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, onSignal);
    // A crash in here must not leave the user's terminal in raw mode on the alternate screen.
    process.on('exit', restoreTerminal);
    if (interactive) {
      out.write(ENTER_ALT_SCREEN + HIDE_CURSOR);
      out.on('resize', onResize);
    }
    if (rawInput) {
      stdin.setRawMode(true);
      stdin.resume();
      stdin.on('data', onKey);
    }
    draw();
    timer = setTimeout(() => { void tick(); }, intervalMs);
  });
}

export const topCommand: CommandModule<object, TopFlags> = {
  command: 'top',
  describe: 'Live view of a running flowlb: per-worker load, bucket shares, rates, drops, migrations',
  builder: TOP_OPTIONS,
  handler: async (argv) => {
    await runTop(argv);
  },
};
