import { describe, expect, it, vi } from 'vitest';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { HandlerLoadError } from '../src/errors.js';
import { instantiateHandler, loadHandlerFactory } from '../src/handlers/load.js';
import { ProxyHandler } from '../src/handlers/proxy.js';
import type { Flow, HandlerContext } from '../src/handlers/types.js';

const fixtures = path.join(path.dirname(fileURLToPath(import.meta.url)), 'fixtures');
const fixture = (name: string): string => path.join(fixtures, name);

const ctx: HandlerContext = {
  workerId: 3,
  workers: 4,
  buckets: 1024,
  idleTimeoutMs: 60_000,
  backends: [{ host: '127.0.0.1', port: 9, weight: 1 }],
  options: {},
};

/** A flow that records its replies (no sockets needed to load and call a handler). */
function recordingFlow(): Flow & { replies: string[] } {
  const replies: string[] = [];
  return {
    id: 0, remoteAddress: '127.0.0.1', remotePort: 5000, family: 4, localAddress: '127.0.0.1', localPort: 5300,
    hash: 0x12345678, bucket: 0x278, key: '127.0.0.1:5000>127.0.0.1:5300', state: undefined,
    reply(payload: Uint8Array) { replies.push(Buffer.from(payload).toString()); },
    replies,
  };
}

async function loadError(spec: string): Promise<HandlerLoadError> {
  try {
    await instantiateHandler(await loadHandlerFactory(spec), ctx);
  } catch (err) {
    expect(err).toBeInstanceOf(HandlerLoadError);
    const e = err as HandlerLoadError;
    expect(e.code).toBe('ERR_HANDLER');
    expect(e.message).not.toContain('\n');
    return e;
  }
  throw new Error(`handler ${spec} loaded but should not have`);
}

describe('loadHandlerFactory', () => {
  it('loads the built-in echo handler', async () => {
    const handler = await instantiateHandler(await loadHandlerFactory('echo'), ctx);
    const flow = recordingFlow();
    handler.onPacket(Buffer.from('hello'), flow);
    expect(flow.replies).toEqual(['hello']);
  });

  it('loads the built-in proxy handler', async () => {
    const handler = await instantiateHandler(await loadHandlerFactory('proxy'), ctx);
    expect(handler).toBeInstanceOf(ProxyHandler);
    expect(handler.name).toBe('proxy');
    await handler.close?.();
  });

  it('loads a fixture module exporting a factory as default, by path and by file URL', async () => {
    for (const spec of [fixture('seq-handler.js'), pathToFileURL(fixture('seq-handler.js')).href]) {
      const handler = await instantiateHandler(await loadHandlerFactory(spec), ctx);
      const flow = recordingFlow();
      handler.onFlowStart?.(flow);
      handler.onPacket(Buffer.from('a'), flow);
      handler.onPacket(Buffer.from('b'), flow);
      expect(flow.replies).toEqual([`3 ${process.pid} 1 a`, `3 ${process.pid} 2 b`]);
      // State moves with exportFlow/importFlow and the count continues.
      const moved = recordingFlow();
      handler.importFlow?.(moved, handler.exportFlow!(flow));
      handler.onPacket(Buffer.from('c'), moved);
      expect(moved.replies).toEqual([`3 ${process.pid} 3 c`]);
    }
  });

  it('loads a handler object exported as `handler`', async () => {
    const handler = await instantiateHandler(await loadHandlerFactory(fixture('throwing-handler.js')), ctx);
    const flow = recordingFlow();
    handler.onPacket(Buffer.from('ok'), flow);
    expect(() => handler.onPacket(Buffer.from('boom'), flow)).toThrow('boom requested');
    expect(flow.replies).toEqual(['ok']);
  });

  it('loads a CommonJS module whose module.exports is the factory', async () => {
    const handler = await instantiateHandler(await loadHandlerFactory(fixture('commonjs-handler.cjs')), ctx);
    const flow = recordingFlow();
    handler.onPacket(Buffer.from('x'), flow);
    expect(flow.replies).toEqual(['cjs 3 x']);
  });

  it('loads a CommonJS module compiled from `export default` (exports.default with __esModule)', async () => {
    const handler = await instantiateHandler(await loadHandlerFactory(fixture('compiled-default-handler.cjs')), ctx);
    const flow = recordingFlow();
    handler.onPacket(Buffer.from('x'), flow);
    expect(flow.replies).toEqual(['compiled 3 x']);
  });

  it('fails with a one-line HandlerLoadError for a missing file', async () => {
    const spec = fixture('no-such-handler.js');
    const err = await loadError(spec);
    expect(err.message).toBe(`handler ${spec} could not be loaded: no such file`);
  });

  it('fails with a one-line HandlerLoadError for a module without onPacket', async () => {
    const spec = fixture('bad-handler.js');
    const err = await loadError(spec);
    expect(err.message).toBe(`handler ${spec} does not export a handler with an onPacket function`);
  });

  it('fails with a one-line HandlerLoadError for a syntax error', async () => {
    const spec = fixture('syntax-error-handler.js');
    const err = await loadError(spec);
    // Node itself reports "SyntaxError: Unexpected token 'this'"; under vitest the import goes through Vite,
    // which reports "RollupError: Parse failure: ...". Either way: one line, naming the file.
    expect(err.message.startsWith(`handler ${spec} could not be loaded: `)).toBe(true);
    expect(err.message).toMatch(/: (SyntaxError|RollupError|RolldownError): /);
    expect(err.cause).toBeInstanceOf(Error);
  });

  it('fails with a one-line HandlerLoadError when a factory throws or returns no handler', async () => {
    const throwing = Object.assign(() => { throw new Error('no backend\nsecond line'); }, {});
    await expect(instantiateHandler(throwing, ctx)).rejects.toThrow(HandlerLoadError);
    await expect(instantiateHandler(throwing, ctx)).rejects.toThrow(/failed to start: no backend$/);
    await expect(instantiateHandler(() => ({}) as never, ctx)).rejects.toThrow(/does not export a handler with an onPacket function/);
  });

  it('fails with a one-line HandlerLoadError when the module, its factory or init never settles', async () => {
    // `flowlb serve` used to exit 13 with no message: nothing else kept the primary's event loop alive.
    vi.useFakeTimers();
    try {
      const spec = fixture('never-loads-handler.js');
      const loading = expect(loadHandlerFactory(spec)).rejects.toThrow(`handler ${spec}: loading the module did not finish within 30 s`);
      await vi.advanceTimersByTimeAsync(30_000);
      await loading;
      const factory = expect(instantiateHandler(() => new Promise(() => {}) as never, ctx)).rejects.toThrow(/its factory did not finish within 30 s$/);
      await vi.advanceTimersByTimeAsync(30_000);
      await factory;
      const init = expect(instantiateHandler(() => ({ onPacket() {}, init: () => new Promise<void>(() => {}) }), ctx)).rejects.toThrow(/init\(\) did not finish within 30 s$/);
      await vi.advanceTimersByTimeAsync(30_000);
      await init;
    } finally {
      vi.useRealTimers();
    }
  });

  it('runs init(ctx) once and turns a failing init into a HandlerLoadError', async () => {
    const seen: number[] = [];
    const handler = await instantiateHandler(() => ({ onPacket() {}, init(c: HandlerContext) { seen.push(c.workerId); } }), ctx);
    expect(typeof handler.onPacket).toBe('function');
    expect(seen).toEqual([3]);
    await expect(
      instantiateHandler(() => ({ onPacket() {}, async init() { throw new TypeError('bad init'); } }), ctx),
    ).rejects.toThrow(/failed to start: TypeError: bad init$/);
  });
});
