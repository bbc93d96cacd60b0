/** The README's example handler works as documented, through a real service. */
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { Client, ROOT, startFlowlb, waitFor, type Running } from './support/service.js';

let running: Running | null = null;
let client: Client | null = null;
afterEach(async () => { client?.close(); await running?.stop('SIGKILL'); });

describe('examples/session-handler.js', () => {
  it('numbers each flow\'s datagrams', async () => {
    running = await startFlowlb(['--listen', '127.0.0.1:0', '--http', 'off', '--workers', '2', '--log-level', 'warn',
      '--handler', path.join(ROOT, 'examples/session-handler.js')]);
    client = await new Client(4).bind('127.0.0.1');
    for (const word of ['a', 'b', 'c']) await client.send(word, running.udpPort, '127.0.0.1');
    await waitFor(() => client!.replies.length === 3, 5000, 'replies');
    expect(client.replies.map(String)).toEqual(['1 a', '2 b', '3 c']);
  });
});

describe('README', () => {
  it('its example config file is valid as written', async () => {
    const fs = await import('node:fs');
    const { validateConfigObject } = await import('../src/config.js');
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const json = /```json\n([\s\S]*?)```/.exec(readme)![1]!;
    const config = validateConfigObject(JSON.parse(json), 'README example');
    expect(config.backends).toHaveLength(2);
    expect(config.listen).toHaveLength(2);
  });
});
