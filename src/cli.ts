#!/usr/bin/env node
/**
 * The `flowlb` command. Expected failures (bad flags, bad config, an address in use) print exactly one
 * line, `flowlb: <message>`, and exit 2 for usage and config problems or 1 for runtime ones; only a bug
 * (an error flowlb did not anticipate) prints a stack trace.
 */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';

import { backendCommand } from './commands/backend.js';
import { genCommand } from './commands/gen.js';
import { serveCommand } from './commands/serve.js';
import { topCommand } from './commands/top.js';
import { whereCommand } from './commands/where.js';
import { EXIT_RUNTIME, EXIT_USAGE, FlowlbError, UsageError } from './errors.js';

const HELP_WIDTH = 100;

function oneLine(text: string): string {
  return text.replace(/\s*\n\s*/g, ' ').trim();
}

/**
 * Rewrites yargs' messages to name things the way the user typed them: `Unknown argument: frob` becomes
 * `unknown option --frob`, `Not enough arguments following: workers` becomes `--workers needs a value`.
 */
function describeUsageError(message: string, args: readonly string[]): string {
  const missingValue = /^Not enough arguments following: (.+)$/.exec(message);
  if (missingValue !== null) return `--${missingValue[1]} needs a value`;
  // yargs' choices check: `Invalid values: Argument: mode, Given: "foo", Choices: "echo", "sink"`.
  const choice = /^Invalid values:\s*Argument: ([^,]+), Given: (.+?), Choices: (.+)$/s.exec(message);
  if (choice !== null) return `--${choice[1]} must be one of ${choice[3]!.replace(/"/g, '')}, got ${choice[2]}`;
  // `--no-balance=true`: a negated boolean takes no value.
  const negated = args.find((arg) => /^--no-[a-z-]+=/.test(arg));
  if (negated !== undefined && /^Unknown arguments?:/.test(message)) return `${negated.split('=')[0]} takes no value, got ${negated}`;
  const unknown = /^Unknown arguments?: (.*)$/.exec(message);
  if (unknown === null) return oneLine(message);
  const firstWord = args.find((arg) => !arg.startsWith('-'));
  const names = unknown[1]!.split(', ').map((name) => {
    const typed = [`--${name}`, `--no-${name}`, `-${name}`].find((flag) =>
      args.some((arg) => arg === flag || arg.startsWith(`${flag}=`)),
    );
    return typed ?? name;
  });
  // A mistyped command comes first; yargs then also reports the command's own flags as unknown ("--http, serv").
  if (firstWord !== undefined && args[0] === firstWord && names.includes(firstWord)) {
    return `unknown command ${firstWord} (commands: serve, gen, backend, top, where)`;
  }
  const allOptions = names.every((name) => name.startsWith('-'));
  const noun = allOptions ? 'option' : 'argument';
  return `unknown ${noun}${names.length > 1 ? 's' : ''} ${names.join(', ')} (see flowlb --help)`;
}

/**
 * The traffic generator has its own error class (src/gen/errors.ts) with `ERR_GEN_*` codes; matched by
 * name so the CLI does not load the generator to recognise its errors.
 */
function genErrorExitCode(err: Error): number | null {
  if (err.name !== 'GenError') return null;
  return (err as Error & { code?: unknown }).code === 'ERR_GEN_OPTION' ? EXIT_USAGE : EXIT_RUNTIME;
}

function exitWithError(err: unknown): never {
  if (err instanceof FlowlbError) {
    process.stderr.write(`flowlb: ${oneLine(err.message)}\n`);
    process.exit(err.exitCode);
  }
  const genExitCode = err instanceof Error ? genErrorExitCode(err) : null;
  if (genExitCode !== null) {
    process.stderr.write(`flowlb: ${oneLine((err as Error).message)}\n`);
    process.exit(genExitCode);
  }
  // Not an error flowlb expected: a bug, so keep the stack for the report.
  const detail = err instanceof Error ? (err.stack ?? err.message) : String(err);
  process.stderr.write(`flowlb: internal error: ${detail}\n`);
  process.exit(EXIT_RUNTIME);
}

const args = hideBin(process.argv);
const parser = yargs(args)
  .scriptName('flowlb')
  .command(serveCommand)
  .command(genCommand)
  .command(backendCommand)
  .command(topCommand)
  .command(whereCommand)
  // yargs turns a non-numeric value of a number option into NaN, and the commands' range checks then said "got NaN".
  .middleware((argv) => {
    // A single-valued flag given twice: yargs makes an array of it, which one command read as its first value and
    // another printed as "got -1,0.2". Say so instead (the repeatable ones, --listen and --backend, are arrays).
    // (yargs' getOptions() is not in its types: read the declared arrays through it as an untyped object.)
    const repeatable = new Set((parser as unknown as { getOptions(): { array: string[] } }).getOptions().array);
    // yargs folds a flag given twice with the same value into one, so count the flags as they were written too.
    const end = args.indexOf('--');
    const written = end < 0 ? args : args.slice(0, end);
    for (const [key, value] of Object.entries(argv)) {
      if (repeatable.has(key) || /[A-Z]/.test(key) || key.length < 2 || key === '_' || key === '$0') continue;
      if (Array.isArray(value)) {
        throw new UsageError(`--${key} is given more than once (${value.map((v) => JSON.stringify(v)).join(', ')}): give it once`);
      }
      const spellings = written.filter((a) => a === `--${key}` || a.startsWith(`--${key}=`) || a === `--no-${key}`).map((a) => a.split('=')[0]!);
      if (spellings.length < 2) continue;
      if (spellings.every((a) => a === spellings[0])) throw new UsageError(`${spellings[0]} is given more than once: give it once`);
      throw new UsageError(`--${key} and --no-${key} are both given: give one`);
    }
    for (const [key, value] of Object.entries(argv)) {
      if (typeof value !== 'number' || !Number.isNaN(value) || /[A-Z]/.test(key) || key.length < 2) continue;
      const i = args.findIndex((a) => a === `--${key}` || a.startsWith(`--${key}=`));
      const raw = i < 0 ? '' : args[i]!.includes('=') ? args[i]!.slice(args[i]!.indexOf('=') + 1) : (args[i + 1] ?? '');
      throw new UsageError(`--${key} must be a number, got ${JSON.stringify(raw)}`);
    }
  })
  .demandCommand(1, 'a command is required: serve, gen, backend, top or where (see flowlb --help)')
  .strict()
  .help()
  .wrap(Math.min(HELP_WIDTH, process.stdout.columns || HELP_WIDTH))
  // By default yargs prints the whole help on a usage error; one line naming the problem is easier to read.
  .fail((message: string | null | undefined, err: Error | undefined) => {
    // Errors thrown by a command handler arrive here too; they keep their own class and exit code.
    if (err !== undefined && err !== null && err.name !== 'YError') throw err;
    throw new UsageError(describeUsageError(message ?? err?.message ?? 'invalid command line', args));
  });

try {
  await parser.parseAsync();
} catch (err) {
  exitWithError(err);
}
