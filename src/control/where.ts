/**
 * "Where would this flow go": the tuple's hash, bucket, owning worker and (for the proxy) backend, computed
 * with the same functions as the packet path. Used by `GET /where` and `flowlb where`.
 */
import type { BackendSpec } from '../config.js';
import { hashTupleStrings, type RawHasher } from '../datapath/tuple.js';
import { buildMaglevTable, lookupMaglev } from '../handlers/maglev.js';
import { backendKey } from '../handlers/proxy.js';

export interface WhereAnswer {
  readonly src: string;
  readonly dst: string;
  readonly hash: number;
  readonly bucket: number;
  /** Worker lane that owns the bucket now (null offline, or when the bucket is migrating/unassigned). */
  readonly worker: number | null;
  /** Proxy backend Maglev picks for the flow (null without backends). */
  readonly backend: string | null;
}

export function splitHostPort(text: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!m) throw new Error(`expected HOST:PORT or [IPv6]:PORT, got ${text}`);
  const port = Number(m[2]);
  if (port > 65535) throw new Error(`port must be an integer between 0 and 65535, got ${m[2]} in ${text}`);
  return { host: m[1]!, port };
}

export function where(
  hasher: RawHasher, src: string, dst: string, buckets: number, backends: readonly BackendSpec[], owner?: Uint16Array,
): WhereAnswer {
  const s = splitHostPort(src), d = splitHostPort(dst);
  const hash = hashTupleStrings(hasher, s.host, s.port, d.host, d.port);
  const bucket = hash & (buckets - 1);
  let backend: string | null = null;
  if (backends.length > 0) {
    const keys = backends.map((b) => ({ key: backendKey(b.host, b.port), weight: b.weight }));
    const i = lookupMaglev(buildMaglevTable(keys), hash);
    backend = i >= 0 ? keys[i]!.key : null;
  }
  const o = owner?.[bucket];
  return { src, dst, hash, bucket, worker: o !== undefined && o < 0xfff0 && owner !== undefined ? o : null, backend };
}
