/**
 * Command-line options of the benchmark scripts, one shared way (yargs, strict): each script declares the
 * options it reads, with a one-line description and its default, and gets them back checked.
 *
 *  - `--help` prints the usage (every option, its description and default) and exits 0 without running anything.
 *  - An unknown option, a missing value or a value of the wrong type or range prints ONE line on stderr naming
 *    it, `skew: unknown option --round (see --help)`, and exits 2: no stack trace, no usage dump.
 *
 * Options with a `short` default take it when `--short` is given (and the option is not); the help shows both.
 * Internal child-process entry modes (`channel.js child ...`, `worker-flows.js --child ...`) do not come here:
 * their parent builds their arguments, and each script keeps parsing those as before.
 */
import yargs, { type Options } from 'yargs';

/** Exit code for a bad command line (as `flowlb` uses for its usage errors). */
export const EXIT_USAGE = 2;
const HELP_WIDTH = 100;

/** Range checks for numbers (each number of a list, too). */
export type NumberCheck = 'positive' | 'nonnegative' | 'positive-int' | 'nonnegative-int';

interface Common {
  /** One line, shown by --help. */
  readonly describe: string;
  /** Shown by --help instead of the default (for defaults computed from other options). */
  readonly defaultDescription?: string;
}
export interface NumberOption extends Common {
  readonly type: 'number';
  readonly default?: number;
  /** The default with --short. */
  readonly short?: number;
  readonly check?: NumberCheck;
  /** Largest value accepted. */
  readonly max?: number;
}
/** Comma-separated numbers, e.g. `--loads 0.85,1,1.15`. */
export interface ListOption extends Common {
  readonly type: 'list';
  readonly default?: readonly number[];
  readonly short?: readonly number[];
  readonly check?: NumberCheck;
}
export interface StringOption extends Common {
  readonly type: 'string';
  readonly default?: string;
  readonly choices?: readonly string[];
  /**
   * The value is passed on verbatim and may start with `-` (extra flowlb flags: `--compare "--queue-limit 64"`):
   * the word after the option is its value whatever it looks like.
   */
  readonly verbatim?: boolean;
}
export interface FlagOption extends Common {
  readonly type: 'boolean';
}
export type BenchOption = NumberOption | ListOption | StringOption | FlagOption;
export type BenchOptions = Readonly<Record<string, BenchOption>>;

type ValueOf<O> =
  O extends FlagOption ? boolean
  : O extends NumberOption ? (O extends { default: number } ? number : number | undefined)
  : O extends ListOption ? (O extends { default: readonly number[] } ? number[] : number[] | undefined)
  : O extends StringOption ? (O extends { default: string } ? string : string | undefined)
  : never;
/** The options by their dashed names; `_`: the words that are not options (only with ParseOptions.positional). */
export type BenchArgs<S extends BenchOptions> = { -readonly [K in keyof S]: ValueOf<S[K]> } & { readonly _: string[] };

/** A problem with the command line; `parseBenchArgs` prints its message as the one line. */
export class BenchUsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'BenchUsageError';
  }
}

export interface ParseOptions {
  /** Words that are not options (run-all's benchmark names); without, any such word is an error. */
  readonly positional?: { readonly name: string; readonly describe: string };
}

function checkNumber(name: string, value: number, raw: string, check: NumberCheck | undefined, max: number | undefined, what = ''): void {
  const got = JSON.stringify(raw);
  if (raw.trim() === '' || !Number.isFinite(value)) throw new BenchUsageError(`--${name} must be ${what || 'a number'}, got ${got}`);
  const ok = {
    positive: value > 0,
    nonnegative: value >= 0,
    'positive-int': Number.isInteger(value) && value >= 1,
    'nonnegative-int': Number.isInteger(value) && value >= 0,
  } as const;
  const need = {
    positive: 'a number > 0',
    nonnegative: 'a number >= 0',
    'positive-int': 'an integer >= 1',
    'nonnegative-int': 'an integer >= 0',
  } as const;
  if (check !== undefined && !ok[check]) throw new BenchUsageError(`--${name} must be ${what ? `${what}, each ` : ''}${need[check]}, got ${got}`);
  if (max !== undefined && value > max) throw new BenchUsageError(`--${name} must be at most ${max}, got ${got}`);
}

/** What the user typed after `--name` (or after `--name=`), for error messages. */
function rawValue(args: readonly string[], name: string): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === `--${name}`) found = args[i + 1];
    else if (args[i]!.startsWith(`--${name}=`)) found = args[i]!.slice(name.length + 3);
  }
  return found;
}

/** yargs' messages, rewritten to name options as typed: `Unknown argument: round` -> `unknown option --round`. */
function describeYargsError(message: string, args: readonly string[]): string {
  const missing = /^Not enough arguments following: (.+)$/.exec(message);
  if (missing !== null) return `--${missing[1]} needs a value`;
  const choice = /^Invalid values:\s*Argument: ([^,]+), Given: (.+?), Choices: (.+)$/s.exec(message);
  if (choice !== null) return `--${choice[1]} must be one of ${choice[3]!.replace(/"/g, '')}, got ${choice[2]}`;
  const unknown = /^Unknown arguments?: (.*)$/s.exec(message);
  if (unknown === null) return message.replace(/\s*\n\s*/g, ' ').trim();
  const names = unknown[1]!.split(', ');
  const options = names.filter((n) => args.some((a) => a === `--${n}` || a.startsWith(`--${n}=`) || a === `-${n}`))
    .map((n) => (args.some((a) => a === `-${n}`) ? `-${n}` : `--${n}`));
  if (options.length > 0) return `unknown option${options.length > 1 ? 's' : ''} ${options.join(', ')} (see --help)`;
  return `unexpected argument${names.length > 1 ? 's' : ''} ${names.join(', ')} (this benchmark takes options only, see --help)`;
}

/**
 * Parses `argv` (default: the process's arguments) against `spec`. On --help prints the usage and exits 0; on
 * any problem prints `SCRIPT: problem` and exits 2. `script` is the benchmark's name (bench/NAME.ts).
 */
export function parseBenchArgs<const S extends BenchOptions>(
  script: string, summary: string, spec: S, argv: readonly string[] = process.argv.slice(2), opts: ParseOptions = {},
): BenchArgs<S> {
  try {
    return parseOrThrow(script, summary, spec, argv, opts);
  } catch (err) {
    if (!(err instanceof BenchUsageError)) throw err;
    process.stderr.write(`${script}: ${err.message}\n`);
    process.exit(EXIT_USAGE);
  }
}

/** As parseBenchArgs, but a bad command line throws BenchUsageError (--help still prints and exits). */
export function parseOrThrow<const S extends BenchOptions>(
  script: string, summary: string, spec: S, argv: readonly string[], opts: ParseOptions = {},
): BenchArgs<S> {
  const hasShort = spec.short?.type === 'boolean';
  // A verbatim option takes the next word as its value even when it starts with '-': `--x VALUE` -> `--x=VALUE`.
  const verbatim = new Set(Object.entries(spec).filter(([, o]) => o.type === 'string' && o.verbatim).map(([k]) => k));
  const args: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--') && verbatim.has(a.slice(2)) && i + 1 < argv.length) { args.push(`${a}=${argv[i + 1]}`); i++; } else args.push(a);
  }

  const yopts: Record<string, Options> = {};
  for (const [name, o] of Object.entries(spec)) {
    const def = (x: unknown): string => (Array.isArray(x) ? x.join(',') : String(x));
    const shortNote = hasShort && 'short' in o && o.short !== undefined ? `; ${def(o.short)} with --short` : '';
    const defaultDescription = o.defaultDescription ?? ('default' in o && o.default !== undefined ? `${def(o.default)}${shortNote}` : shortNote ? `none${shortNote}` : undefined);
    const base: Options = { describe: o.describe, ...(defaultDescription !== undefined ? { defaultDescription } : {}) };
    if (o.type === 'boolean') yopts[name] = { ...base, type: 'boolean' };
    else if (o.type === 'number') yopts[name] = { ...base, type: 'number', requiresArg: true };
    else if (o.type === 'list') yopts[name] = { ...base, type: 'string', requiresArg: true };
    else yopts[name] = { ...base, type: 'string', requiresArg: true, ...(o.choices ? { choices: [...o.choices] } : {}) };
  }

  const usage = `Usage: node dist/bench/${script}.js${opts.positional ? ` [${opts.positional.name}..]` : ''} [options]\n\n${summary}` +
    (opts.positional ? `\n\n${opts.positional.name}: ${opts.positional.describe}` : '');
  let parser = yargs(args)
    .scriptName(`node dist/bench/${script}.js`)
    .usage(usage)
    // Options are read by their dashed names only; `--no-static` is an option of its own, not "static = false".
    .parserConfiguration({ 'camel-case-expansion': false, 'boolean-negation': false, 'duplicate-arguments-array': false, 'dot-notation': false })
    .options(yopts)
    .version(false)
    .help()
    .wrap(Math.min(HELP_WIDTH, process.stdout.columns || HELP_WIDTH))
    .fail((message: string | null | undefined, err: Error | undefined) => {
      if (err !== undefined && err !== null && err.name !== 'YError') throw err;
      throw new BenchUsageError(describeYargsError(message ?? err?.message ?? 'invalid command line', args));
    });
  parser = opts.positional ? parser.strictOptions() : parser.strict();
  const parsed = parser.parseSync() as Record<string, unknown> & { _: (string | number)[] };

  // Given twice: the flowlb CLI refuses it, and so does every bench (the last one won, without a word).
  for (const name of Object.keys(spec)) {
    const times = args.filter((a) => a === `--${name}` || a.startsWith(`--${name}=`)).length;
    if (times > 1) throw new BenchUsageError(`--${name} is given more than once: give it once`);
  }

  const short = hasShort && parsed.short === true;
  const out: Record<string, unknown> = { _: parsed._.map(String) };
  for (const [name, o] of Object.entries(spec)) {
    const given = parsed[name];
    const raw = rawValue(args, name);
    if (o.type === 'boolean') { out[name] = given === true; continue; }
    if (given === undefined) {
      out[name] = short && 'short' in o && o.short !== undefined ? (Array.isArray(o.short) ? [...o.short] : o.short)
        : 'default' in o && o.default !== undefined ? (Array.isArray(o.default) ? [...o.default] : o.default) : undefined;
      continue;
    }
    if (o.type === 'number') {
      checkNumber(name, given as number, raw ?? String(given), o.check, o.max);
      out[name] = given;
    } else if (o.type === 'list') {
      const text = String(given);
      const what = 'a comma-separated list of numbers';
      if (text.trim() === '') throw new BenchUsageError(`--${name} must be ${what}, got ""`);
      out[name] = text.split(',').map((part) => {
        const n = Number(part);
        if (part.trim() === '' || !Number.isFinite(n)) throw new BenchUsageError(`--${name} must be ${what}, got ${JSON.stringify(text)}`);
        checkNumber(name, n, part, o.check, undefined, what);
        return n;
      });
    } else {
      out[name] = String(given);
    }
  }
  return out as BenchArgs<S>;
}

