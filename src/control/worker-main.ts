/** Entry of a worker process (cluster.setupPrimary exec). */
import { runWorker } from './worker.js';

runWorker().catch((err: unknown) => {
  process.stderr.write(`flowlb worker: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
