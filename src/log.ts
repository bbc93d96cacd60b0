/**
 * Structured logging: one JSON object per line on stderr, `{"ts","level","msg","pid",...fields}`.
 * For lifecycle and control-plane events only (start, bind, worker exit, migration, reload); never call it
 * per packet: building and stringifying the record costs microseconds, and per-packet facts belong in counters.
 */
import type { LogLevel } from './config.js';

export type LogFields = Readonly<Record<string, unknown>>;

export interface Logger {
  readonly level: LogLevel;
  /** True if a record at `level` would be written; use it to skip building expensive fields. */
  enabled(level: LogLevel): boolean;
  debug(msg: string, fields?: LogFields): void;
  info(msg: string, fields?: LogFields): void;
  warn(msg: string, fields?: LogFields): void;
  error(msg: string, fields?: LogFields): void;
  /** A logger that adds `fields` to every record (e.g. `{ worker: 3 }`). */
  child(fields: LogFields): Logger;
}

export type LogSink = (line: string) => void;

export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

const LEVEL_RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40 };
/** Keys the logger owns; fields with these names are dropped rather than allowed to forge a record. */
const RESERVED_KEYS = new Set(['ts', 'level', 'msg', 'pid']);

export function isLogLevel(value: unknown): value is LogLevel {
  return typeof value === 'string' && Object.hasOwn(LEVEL_RANK, value);
}

function writeToStderr(line: string): void {
  process.stderr.write(line);
}

/** JSON.stringify turns an Error into `{}` and throws on bigint; keep what a reader needs instead. */
function jsonReplacer(_key: string, value: unknown): unknown {
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) {
    const plain: Record<string, unknown> = { name: value.name, message: value.message };
    const code = (value as NodeJS.ErrnoException).code;
    if (code !== undefined) plain.code = code;
    if (value.stack !== undefined) plain.stack = value.stack;
    return plain;
  }
  return value;
}

function formatRecord(level: LogLevel, msg: string, base: LogFields, fields: LogFields | undefined): string {
  const record: Record<string, unknown> = { ts: new Date().toISOString(), level, msg, pid: process.pid };
  for (const source of [base, fields]) {
    if (source === undefined) continue;
    for (const key of Object.keys(source)) {
      if (!RESERVED_KEYS.has(key)) record[key] = source[key];
    }
  }
  try {
    return JSON.stringify(record, jsonReplacer) + '\n';
  } catch (err) {
    // A circular field must not turn a log call into a crash; keep the message and say what was lost.
    return JSON.stringify({ ts: record.ts, level, msg, pid: record.pid, logError: String(err) }) + '\n';
  }
}

/**
 * Creates a logger writing records at `level` and above. `sink` receives whole lines including the
 * newline (stderr by default; tests pass an array push).
 */
export function createLogger(level: LogLevel, base: LogFields = {}, sink: LogSink = writeToStderr): Logger {
  const threshold = LEVEL_RANK[level];
  const frozenBase: LogFields = Object.freeze({ ...base });
  const write = (recordLevel: LogLevel, msg: string, fields?: LogFields): void => {
    if (LEVEL_RANK[recordLevel] < threshold) return;
    sink(formatRecord(recordLevel, msg, frozenBase, fields));
  };
  return {
    level,
    enabled: (recordLevel) => LEVEL_RANK[recordLevel] >= threshold,
    debug: (msg, fields) => write('debug', msg, fields),
    info: (msg, fields) => write('info', msg, fields),
    warn: (msg, fields) => write('warn', msg, fields),
    error: (msg, fields) => write('error', msg, fields),
    child: (fields) => createLogger(level, { ...frozenBase, ...fields }, sink),
  };
}
