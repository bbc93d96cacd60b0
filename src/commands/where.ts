/**
 * `flowlb where --src IP:PORT [--dst IP:PORT] [--url URL | --buckets B --backend ...]`: which bucket, worker and
 * backend a flow maps to. With --url it asks a running instance (live owner table); without, it computes offline.
 */
import type { CommandModule } from 'yargs';
import { DEFAULT_BUCKETS, DEFAULT_LISTEN, MAX_BUCKETS, parseBackend, parseEndpoint } from '../config.js';
import { FlowlbError, UsageError } from '../errors.js';
import { loadHasher } from '../datapath/tuple.js';
import { where } from '../control/where.js';

interface WhereFlags { src: string; dst?: string; url?: string; buckets?: number; backend?: string[] }

export const whereCommand: CommandModule<object, WhereFlags> = {
  command: 'where',
  describe: 'Which bucket, worker and proxy backend a flow (source address:port) maps to',
  builder: {
    src: { type: 'string', demandOption: true, describe: 'Client address and port, IP:PORT or [IPv6]:PORT' },
    dst: { type: 'string', describe: 'flowlb address the client sends to', defaultDescription: `${DEFAULT_LISTEN} (or the instance's first listener)` },
    url: { type: 'string', describe: 'Ask a running instance (its status address), e.g. http://127.0.0.1:9464' },
    buckets: { type: 'number', describe: 'Offline: bucket count', default: DEFAULT_BUCKETS },
    backend: { type: 'array', string: true, describe: 'Offline: proxy backends HOST:PORT[@WEIGHT], to see which one Maglev picks' },
  },
  handler: async (argv) => {
    // Malformed addresses fail here, named by the flag (with --url too, where the instance would say src/dst).
    const src = parseEndpoint(argv.src, '--src');
    const dst = argv.dst === undefined ? undefined : parseEndpoint(argv.dst, '--dst');
    if (dst !== undefined && dst.family !== src.family) {
      throw new UsageError(`--src ${argv.src} is IPv${src.family} and --dst ${argv.dst} is IPv${dst.family}: a flow has one address family`);
    }
    if (argv.url) {
      const base = argv.url.replace(/\/+$/, '');
      const q = new URLSearchParams({ src: argv.src, ...(argv.dst ? { dst: argv.dst } : {}) });
      let res: Response;
      // Not reaching flowlb is a runtime failure (exit 1, as `flowlb top`); a 400 is about the flow given (usage, 2).
      try { res = await fetch(`${base}/where?${q}`); } catch (err) {
        const cause = (err as Error & { cause?: { code?: string } }).cause?.code;
        throw new FlowlbError('ERR_WHERE_UNREACHABLE', `cannot reach flowlb at ${base}: ${cause ?? (err as Error).message}`);
      }
      const text = await res.text();
      if (res.status === 400) throw new UsageError(text.trim());
      if (!res.ok) throw new FlowlbError('ERR_WHERE_HTTP', `${base}/where answered ${res.status}: is --url the status address of flowlb (http://HOST:PORT)?`);
      process.stdout.write(`${text}\n`);
      return;
    }
    const buckets = argv.buckets ?? DEFAULT_BUCKETS;
    if (!(Number.isInteger(buckets) && buckets >= 1 && buckets <= MAX_BUCKETS && (buckets & (buckets - 1)) === 0)) {
      throw new UsageError(`--buckets must be a power of two <= ${MAX_BUCKETS}, got ${buckets}`);
    }
    if (dst === undefined && src.family === 6) {
      throw new UsageError(`--src ${argv.src} is IPv6 and --dst defaults to ${DEFAULT_LISTEN} (IPv4): give --dst [IPv6]:PORT, the listener it reached`);
    }
    const backends = (argv.backend ?? []).map((b) => parseBackend(b));
    try {
      const answer = where(await loadHasher(), argv.src, argv.dst ?? DEFAULT_LISTEN, buckets, backends);
      process.stdout.write(`${JSON.stringify(answer)}\n`);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  },
};
