/**
 * The queuing model inside a worker, end to end: a heavy flow's backlog does not delay light flows. One worker
 * with a 300 us per-packet cost; a heavy flow puts 400 packets (120 ms of work) in the queue, then 20 light flows
 * send one packet each. With deficit round robin the light flows are served within the next round, long before
 * the heavy backlog is done; a FIFO queue would serve them after it. The assertion is on order, not on time.
 */
import path from 'node:path';
import fs from 'node:fs';
import os from 'node:os';
import { afterEach, describe, expect, it } from 'vitest';
import { Client, FIXTURES, startFlowlb, waitFor, type Running } from './support/service.js';

let running: Running | null = null;
let clients: Client[] = [];
let dir = '';
afterEach(async () => {
  for (const c of clients) c.close();
  clients = [];
  await running?.stop('SIGKILL');
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/** One worker with the burn handler at `costUs` per packet; a heavy client and `lights` light clients, and the order replies arrive in. */
async function rig(costUs: number, lights: number): Promise<{ heavy: Client; light: Client[]; arrivals: string[] }> {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'flowlb-fair-'));
  const file = path.join(dir, 'c.json');
  fs.writeFileSync(file, JSON.stringify({ handler: path.join(FIXTURES, 'burn-handler.js'), handlerOptions: { costUs } }));
  running = await startFlowlb(['--config', file, '--listen', '127.0.0.1:0', '--http', '127.0.0.1:0', '--workers', '1', '--no-balance', '--log-level', 'warn']);
  const heavy = await new Client(4).bind('127.0.0.1');
  heavy.socket.setRecvBufferSize(1 << 20);
  clients.push(heavy);
  const light: Client[] = [];
  for (let i = 0; i < lights; i++) { const c = await new Client(4).bind('127.0.0.1'); light.push(c); clients.push(c); }
  const arrivals: string[] = [];
  heavy.socket.on('message', () => arrivals.push('H'));
  for (const c of light) c.socket.on('message', () => arrivals.push('L'));
  return { heavy, light, arrivals };
}

describe('fair queuing', () => {
  it('serves light flows ahead of a heavy flow\'s backlog', async () => {
    const { heavy, light, arrivals } = await rig(300, 20);
    // The backlog: 400 heavy packets, sent in chunks so no socket buffer overflows on the way in.
    for (let i = 0; i < 400; i += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => heavy.send(`h${i + k}`, running!.udpPort, '127.0.0.1')));
    await waitFor(() => arrivals.length >= 5, 5000, 'the heavy flow to be served'); // its backlog is now queued in the worker
    await Promise.all(light.map((c, i) => c.send(`l${i}`, running!.udpPort, '127.0.0.1')));
    await waitFor(() => heavy.replies.length === 400 && light.every((c) => c.replies.length === 1), 20_000, 'every reply');
    const lastLight = arrivals.lastIndexOf('L');
    const heavyAfterLastLight = arrivals.slice(lastLight).filter((x) => x === 'H').length;
    // Every light reply came while most of the heavy backlog was still waiting.
    expect(heavyAfterLastLight).toBeGreaterThan(200);
  });

  it('lets new flows in after a few heavy packets when every packet is expensive (2 ms each)', async () => {
    const { heavy, light, arrivals } = await rig(2000, 10);
    // 150 heavy packets: 300 ms of work queued in the worker.
    for (let i = 0; i < 150; i += 50) await Promise.all(Array.from({ length: 50 }, (_, k) => heavy.send(`h${i + k}`, running!.udpPort, '127.0.0.1')));
    await waitFor(() => arrivals.length >= 10, 5000, 'the heavy flow to be served');
    const heavyBefore = arrivals.length;
    await Promise.all(light.map((c, i) => c.send(`l${i}`, running!.udpPort, '127.0.0.1')));
    await waitFor(() => light.every((c) => c.replies.length === 1), 10_000, 'every light reply');
    // Heavy packets served between the light packets' arrival and the last light reply: the rest of the slice
    // in progress, then the heavy flow's DRR turn (4 of these small packets). A fixed slice of 16 made it 16 or
    // more (a light flow waited 16 x 2 ms before the worker even read its packet).
    const heavyBetween = arrivals.slice(heavyBefore, arrivals.lastIndexOf('L')).filter((x) => x === 'H').length;
    expect(heavyBetween).toBeLessThan(10);
  });
});
