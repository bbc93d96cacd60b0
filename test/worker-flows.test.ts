/**
 * The Flow objects a worker hands its handler: one reused view for a `statelessFlows` handler, otherwise one
 * object per flow made on first use, which keeps its own fields once the flow has ended (its table slot may
 * then hold another flow). A WorkerRuntime in-process, fed PACKET frames, with a stub front socket.
 */
import { describe, expect, it } from 'vitest';
import { defaultConfig, type FlowlbConfig } from '../src/config.js';
import { WorkerRuntime } from '../src/control/worker.js';
import { DROP_HANDLER_ERROR } from '../src/datapath/counters.js';
import { FRAME_HEADER_BYTES, writePacketFrame } from '../src/datapath/frame.js';
import type { Flow, FlowHandler } from '../src/handlers/types.js';
import { createLogger } from '../src/log.js';

interface Sent { port: number; address: string; payload: string }

function runtime(handler: FlowHandler, maxFlows = 64): { rt: WorkerRuntime; sent: Sent[]; feed: (flows: number[]) => void } {
  const base = defaultConfig();
  const config: FlowlbConfig = { ...base, maxFlowsPerWorker: maxFlows, idleTimeoutMs: 60_000, queue: { ...base.queue } };
  const rt = new WorkerRuntime(config, 0, handler, createLogger('error', {}, () => {}));
  rt.owned.fill(1);
  const sent: Sent[] = [];
  rt.fronts[0] = { send: (p: Uint8Array, port: number, address: string) => { sent.push({ port, address, payload: Buffer.from(p).toString() }); } } as never;
  rt.frontPorts[0] = 5300;
  const feed = (flows: number[]): void => {
    const chunk = Buffer.alloc(flows.length * (FRAME_HEADER_BYTES + 8));
    let off = 0;
    for (const i of flows) {
      const addr = new Uint8Array([10, 0, (i >> 8) & 255, i & 255, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
      const hash = Math.imul(i + 1, 0x9e3779b1) >>> 0;
      off = writePacketFrame(chunk, off, 4, 0, 20_000 + i, hash & (config.buckets - 1), hash, addr, Buffer.from(`p${i}`.padEnd(8, '.')));
    }
    rt.onChunk(chunk.subarray(0, off));
    (rt as unknown as { drain(): void }).drain();
  };
  return { rt, sent, feed };
}

/** Ends every flow whose last packet is older than the idle timeout (0 here): one full sweep. */
function expireAll(rt: WorkerRuntime): void {
  rt.idleTimeoutMs = -1;
  for (let k = 0; k < 8; k++) rt.sweep();
}

describe('worker flow objects', () => {
  it('a statelessFlows handler gets one view, aimed at each packet\'s flow, and no object per flow', () => {
    const seen = new Set<Flow>();
    const handler: FlowHandler = {
      statelessFlows: true,
      onPacket(payload, flow) { seen.add(flow); flow.reply(Buffer.from(`${flow.remoteAddress}:${flow.remotePort}>${flow.localPort} ${payload}`)); },
    };
    const { rt, sent, feed } = runtime(handler);
    feed([1, 2, 3, 1, 300]);
    expect(seen.size).toBe(1);
    expect(rt.refs.length).toBe(0);
    // DRR order: flow 1's two packets share its turn.
    expect(sent.map((s) => `${s.address}:${s.port}`)).toEqual(['10.0.0.1:20001', '10.0.0.1:20001', '10.0.0.2:20002', '10.0.0.3:20003', '10.0.1.44:20300']);
    expect(sent[4]!.payload).toBe('10.0.1.44:20300>5300 p300....');
  });

  it('setting flow.state in a statelessFlows handler counts a handler error and the worker goes on', () => {
    const handler: FlowHandler = { statelessFlows: true, onPacket(_p, flow) { flow.state = 1; } };
    const { rt, feed } = runtime(handler);
    feed([1, 2]);
    expect(rt.drops[DROP_HANDLER_ERROR]).toBe(2);
  });

  it('a statelessFlows Flow kept past its call cannot reply: it throws instead of answering another client', () => {
    let kept: Flow | null = null;
    const handler: FlowHandler = { statelessFlows: true, onPacket(_p, flow) { kept ??= flow; flow.reply(Buffer.from('now')); } };
    const { sent, feed } = runtime(handler);
    feed([1, 2]);
    expect(sent.map((x) => x.port)).toEqual([20_001, 20_002]);
    // The view was aimed at flow 2 last: a late reply went to client 2 with client 1's data, unnoticed.
    expect(() => kept!.reply(Buffer.from('late'))).toThrow(/after the call returned/);
    expect(sent).toHaveLength(2);
  });

  it('a hook other than onPacket that throws is a handler crash, not a dropped packet', () => {
    const handler: FlowHandler = {
      onFlowStart() { throw new Error('start'); },
      onPacket(_p, flow) { flow.reply(Buffer.from('ok')); },
      onFlowEnd() { throw new Error('end'); },
    };
    const { rt, sent, feed } = runtime(handler);
    feed([1, 2]);
    expireAll(rt);
    expect(sent).toHaveLength(2);
    expect(rt.drops[DROP_HANDLER_ERROR]).toBe(0);
    expect(rt.handlerCrashes).toBe(4);
    expect((rt.lastHandlerError as Error).message).toBe('end');
  });

  it('one sweep tick of idle/8 visits every owned bucket (a flow ends at most 1/8 idle timeout late, plus a tick)', async () => {
    const { rt, feed } = runtime({ onPacket() {} });
    feed(Array.from({ length: 40 }, (_, i) => i));
    expect(rt.flows.size).toBe(40);
    rt.idleTimeoutMs = 80;
    await new Promise((r) => setTimeout(r, 100));
    // A slice of buckets/8 per tick took a whole idle timeout to go round: flows ended up to 2 idle timeouts late.
    rt.sweep(10);
    expect(rt.flows.size).toBe(0);
  });

  it('a per-flow handler keeps one object per flow with its state; after the flow ends the object still names its own client', () => {
    const objects = new Map<number, Flow>();
    const ended: Flow[] = [];
    const handler: FlowHandler = {
      onFlowStart(flow) { flow.state = { n: 0 }; },
      onPacket(_p, flow) {
        (flow.state as { n: number }).n++;
        const prev = objects.get(flow.remotePort);
        if (prev !== undefined) expect(prev).toBe(flow);
        objects.set(flow.remotePort, flow);
      },
      onFlowEnd(flow) { ended.push(flow); },
    };
    const { rt, sent, feed } = runtime(handler);
    feed([1, 2, 1, 1]);
    expect((objects.get(20_001)!.state as { n: number }).n).toBe(3);
    expect(objects.get(20_001)!.key).toBe('10.0.0.1:20001>127.0.0.1:5300');
    expireAll(rt);
    expect(ended.length).toBe(2);
    expect(rt.flows.size).toBe(0);
    // New flows take the freed slots; the old objects keep their own fields and replies.
    rt.idleTimeoutMs = 60_000;
    feed([7, 8]);
    const old = objects.get(20_001)!;
    expect(old.remoteAddress).toBe('10.0.0.1');
    expect(old.remotePort).toBe(20_001);
    old.reply(Buffer.from('late'));
    expect(sent.at(-1)).toEqual({ port: 20_001, address: '10.0.0.1', payload: 'late' });
    expect(objects.get(20_007)!.remoteAddress).toBe('10.0.0.7');
  });
});
