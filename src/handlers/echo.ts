/**
 * The built-in `echo` handler: every datagram goes back to its sender unchanged. flowlb's own packet path with
 * nothing on top, so it is what benchmarks and the integration tests run.
 */
import type { Flow, FlowHandler, HandlerContext } from './types.js';

const echoHandler: FlowHandler = {
  name: 'echo',
  // Nothing per flow: the worker keeps no Flow object for echo's flows (memory per idle flow, GC).
  statelessFlows: true,
  onPacket(payload: Buffer, flow: Flow): void {
    flow.reply(payload);
  },
};

/** The echo handler is stateless, so every worker shares the one object. */
export function createEchoHandler(_ctx: HandlerContext): FlowHandler {
  return echoHandler;
}
