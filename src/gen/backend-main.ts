/**
 * Entry point of a backend simulator in a child process (used by the generator's self-test so that the
 * echo does not share the generator's event loop). Parent sends {cmd:'start', opts}; the child answers
 * {cmd:'listening', address, port}; on {cmd:'stop'} it answers {cmd:'stats', stats} and exits once the
 * parent disconnects.
 */
import { startBackend } from './backend.js';
import type { BackendHandle, BackendOptions } from './backend.js';

let handle: BackendHandle | null = null;

function send(m: unknown): void {
  if (process.connected) process.send!(m);
}

process.on('message', (raw: unknown) => {
  const m = raw as { cmd: string; opts?: BackendOptions };
  if (m.cmd === 'start' && m.opts && handle === null) {
    startBackend(m.opts).then(
      (h) => {
        handle = h;
        send({ cmd: 'listening', address: h.address, port: h.port });
      },
      (err: unknown) => send({ cmd: 'error', message: err instanceof Error ? err.message : String(err) }),
    );
  } else if (m.cmd === 'stop') {
    const h = handle;
    void (h ? h.close() : Promise.resolve(null)).then((stats) => send({ cmd: 'stats', stats }));
  }
});
// The parent stops this process with {cmd:'stop'}; Ctrl-C on the terminal reaches it too and is left to the parent.
process.on('SIGINT', () => undefined);
process.on('disconnect', () => process.exit(0));
