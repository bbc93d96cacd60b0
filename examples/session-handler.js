// A complete flowlb handler: a per-flow session that numbers the client's datagrams, answers each with
// "<n> <payload>", drops clients that send more than `maxPerSecond` (handlerOptions), and logs a summary line
// when the session ends. Its state moves with the flow when the balancer migrates the flow's bucket.
//
//   flowlb serve --handler ./examples/session-handler.js --config flowlb.json
//   (flowlb.json: { "handlerOptions": { "maxPerSecond": 100 } })

/** @param {import('flowlb').HandlerContext} ctx */
export default function createSessionHandler(ctx) {
  const maxPerSecond = Number(ctx.options.maxPerSecond ?? 1000);
  let ended = 0;

  return {
    name: 'session',

    // A new flow (first datagram from this client address and port): set up its state.
    onFlowStart(flow) {
      flow.state = { n: 0, windowStart: performance.now(), inWindow: 0, dropped: 0 };
    },

    // Every datagram of the flow, in arrival order. Keep it cheap: no logging, no allocation you can avoid.
    onPacket(payload, flow) {
      const s = flow.state;
      const now = performance.now();
      if (now - s.windowStart >= 1000) { s.windowStart = now; s.inWindow = 0; }
      if (++s.inWindow > maxPerSecond) { s.dropped++; return; }
      s.n++;
      flow.reply(Buffer.concat([Buffer.from(`${s.n} `), payload]));
    },

    // The flow idled out (or the service is stopping).
    onFlowEnd(flow, reason) {
      ended++;
      if (ended % 1000 === 1) console.error(`session ${flow.key} ended (${reason}) after ${flow.state.n} datagrams`);
    },

    // Migration: what must travel to the flow's new worker (JSON-serialisable).
    exportFlow(flow) {
      const { n, dropped } = flow.state;
      return { data: { n, dropped } };
    },
    importFlow(flow, exported) {
      flow.state = { n: exported.data.n, windowStart: performance.now(), inWindow: 0, dropped: exported.data.dropped };
    },
  };
}
