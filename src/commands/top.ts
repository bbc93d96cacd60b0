/**
 * Placeholder for `flowlb top` (a live view of workers and buckets from the status HTTP endpoint), which
 * another change provides; it exists so the CLI builds and lists the command meanwhile.
 */
import type { CommandModule } from 'yargs';

import { EXIT_USAGE } from '../errors.js';

export const topCommand: CommandModule = {
  command: 'top',
  describe: 'Live view of a running flowlb (not implemented yet)',
  handler: () => {
    process.stderr.write('flowlb: top is not implemented yet\n');
    process.exit(EXIT_USAGE);
  },
};
