/**
 * Turns the config's `handler` string into a FlowHandler: `echo` and `proxy` are built in, anything else is a
 * module path (absolute, a file: URL, or relative to the working directory) loaded with import(), so ESM and
 * CommonJS modules both work.
 *
 * Every failure is a HandlerLoadError whose message is one line naming the module, because the CLI prints
 * `flowlb: <message>` and nothing else; the original error stays attached as `cause`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { FlowlbError, HandlerLoadError } from '../errors.js';
import { createEchoHandler } from './echo.js';
import { createProxyHandler } from './proxy.js';
import { createSockperfHandler } from './sockperf.js';
import type { FlowHandler, HandlerContext, HandlerFactory } from './types.js';

/** The handler names that need no module. */
export const BUILTIN_HANDLERS: Readonly<Record<string, HandlerFactory>> = {
  echo: createEchoHandler,
  proxy: createProxyHandler,
  sockperf: createSockperfHandler,
};

/**
 * A handler module, factory or init that has not settled after this long is an error. Without a limit, a module
 * whose top-level await never settles made `flowlb serve` exit 13 with no message (nothing else keeps the
 * primary's event loop alive while it loads the handler).
 */
export const HANDLER_LOAD_TIMEOUT_MS = 30_000;

/** `promise`, or a HandlerLoadError after HANDLER_LOAD_TIMEOUT_MS (the timer keeps the event loop alive meanwhile). */
async function settleWithin<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new HandlerLoadError(`${what} did not finish within ${HANDLER_LOAD_TIMEOUT_MS / 1000} s`)), HANDLER_LOAD_TIMEOUT_MS);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The config spec a factory came from, for messages of instantiateHandler. */
const kHandlerSpec = Symbol('flowlb.handlerSpec');
type NamedFactory = HandlerFactory & { [kHandlerSpec]?: string };

function named(factory: HandlerFactory, spec: string): HandlerFactory {
  const wrapped: NamedFactory = (ctx) => factory(ctx);
  wrapped[kHandlerSpec] = spec;
  return wrapped;
}

function isHandler(value: unknown): value is FlowHandler {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as { onPacket?: unknown }).onPacket === 'function'
  );
}

/** First line of an error, with its class unless it is a plain Error. */
function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err).split('\n', 1)[0]!;
  const message = err.message.split('\n', 1)[0]!;
  return err.name && err.name !== 'Error' ? `${err.name}: ${message}` : message;
}

/** CommonJS syntax errors carry "file:line" as the first stack line; ESM ones (Node 20) carry no position. */
function syntaxErrorLine(err: unknown, file: string): string {
  if (!(err instanceof SyntaxError) || typeof err.stack !== 'string') return '';
  const first = err.stack.split('\n', 1)[0]!;
  const match = first.startsWith(file) ? /:(\d+)$/.exec(first) : null;
  return match ? ` (line ${match[1]})` : '';
}

function resolveModule(spec: string): { file: string; url: string } {
  if (spec.startsWith('file:')) {
    try {
      return { file: fileURLToPath(spec), url: spec };
    } catch (err) {
      throw new HandlerLoadError(`handler ${spec} could not be loaded: ${describeError(err)}`, { cause: err });
    }
  }
  const file = path.resolve(spec);
  return { file, url: pathToFileURL(file).href };
}

/**
 * The factory for a handler spec: `'echo'`, `'proxy'`, or a module exporting `default` (or `handler`) as either a
 * FlowHandler object or a factory `(ctx) => FlowHandler | Promise<FlowHandler>`. A CommonJS `module.exports` is
 * its `default`. A factory is only checked when called (see instantiateHandler).
 */
export async function loadHandlerFactory(spec: string): Promise<HandlerFactory> {
  const builtin = Object.hasOwn(BUILTIN_HANDLERS, spec) ? BUILTIN_HANDLERS[spec] : undefined;
  if (builtin !== undefined) return named(builtin, spec);

  const { file, url } = resolveModule(spec);
  let mod: Record<string, unknown>;
  try {
    mod = (await settleWithin(import(url), `handler ${spec}: loading the module`)) as Record<string, unknown>;
  } catch (err) {
    if (err instanceof HandlerLoadError) throw err;
    const code = (err as NodeJS.ErrnoException | undefined)?.code;
    const reason =
      (code === 'ERR_MODULE_NOT_FOUND' || code === 'ENOENT') && !fs.existsSync(file)
        ? 'no such file'
        : describeError(err) + syntaxErrorLine(err, file);
    throw new HandlerLoadError(`handler ${spec} could not be loaded: ${reason}`, { cause: err });
  }

  // A CommonJS module's exports object is its ESM `default`: `module.exports.handler = ...`, and also what tsc and
  // Babel emit for `export default` (`exports.default = ...` with `__esModule`), which was rejected before.
  const fallback = mod.default as { handler?: unknown; default?: unknown } | undefined;
  const cjs = typeof fallback === 'object' && fallback !== null ? fallback : null;
  const candidates = [mod.default, mod.handler, cjs?.handler, cjs?.default];
  for (const candidate of candidates) {
    if (isHandler(candidate)) return named(() => candidate, spec);
  }
  for (const candidate of candidates) {
    if (typeof candidate === 'function') return named(candidate as HandlerFactory, spec);
  }
  throw new HandlerLoadError(`handler ${spec} does not export a handler with an onPacket function`);
}

/**
 * Calls the factory, checks that it gave a handler with `onPacket`, and runs its `init(ctx)` (the one place
 * init is called). Errors thrown by the factory or init become HandlerLoadError ("failed to start"), except
 * FlowlbErrors (e.g. a ConfigError for bad handlerOptions), which pass through unchanged.
 */
export async function instantiateHandler(factory: HandlerFactory, ctx: HandlerContext): Promise<FlowHandler> {
  const spec = (factory as NamedFactory)[kHandlerSpec] ?? (factory.name || 'factory');
  let handler: unknown;
  try {
    handler = await settleWithin(Promise.resolve(factory(ctx)), `handler ${spec}: its factory`);
  } catch (err) {
    if (err instanceof FlowlbError) throw err;
    throw new HandlerLoadError(`handler ${spec} failed to start: ${describeError(err)}`, { cause: err });
  }
  if (!isHandler(handler)) {
    throw new HandlerLoadError(`handler ${spec} does not export a handler with an onPacket function`);
  }
  if (typeof handler.init === 'function') {
    try {
      await settleWithin(Promise.resolve(handler.init(ctx)), `handler ${spec}: init()`);
    } catch (err) {
      if (err instanceof FlowlbError) throw err;
      throw new HandlerLoadError(`handler ${spec} failed to start: ${describeError(err)}`, { cause: err });
    }
  }
  return handler;
}

/**
 * Closes a handler the primary made only to check it (at start and on reload: workerId -1, no packets), with the
 * same time limit as loading: a close() that never settled made `flowlb serve` exit 13 with no message.
 */
export async function closeCheckedHandler(handler: FlowHandler, spec: string): Promise<void> {
  await settleWithin(Promise.resolve(handler.close?.()), `handler ${spec}: close()`);
}
