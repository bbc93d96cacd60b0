/**
 * "Where would this flow go": the tuple's hash, bucket, owning worker and (for the proxy) backend, computed
 * with the same functions as the packet path. Used by `GET /where` and `flowlb where`.
 */
import { formatEndpoint, parseEndpoint, type BackendSpec } from '../config.js';
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

export function where(
  hasher: RawHasher, src: string, dst: string, buckets: number, backends: readonly BackendSpec[], owner?: Uint16Array,
): WhereAnswer {
  // Read as every address flag is (parseEndpoint): IP literals as net.isIP takes them, so no leading zeros in an
  // IPv4 octet (the hash would read 01.2.3.4 as 1.2.3.4 and answer for an address no packet carries).
  const s = parseEndpoint(src, 'src'), d = parseEndpoint(dst, 'dst');
  if (s.family !== d.family) throw new Error(`src ${src} is IPv${s.family} and dst ${dst} is IPv${d.family}: a flow has one address family`);
  const hash = hashTupleStrings(hasher, s.host, s.port, d.host, d.port);
  const bucket = hash & (buckets - 1);
  let backend: string | null = null;
  if (backends.length > 0) {
    const keys = backends.map((b) => ({ key: backendKey(b.host, b.port), weight: b.weight }));
    const i = lookupMaglev(buildMaglevTable(keys), hash);
    backend = i >= 0 ? keys[i]!.key : null;
  }
  const o = owner?.[bucket];
  // Shown in the one spelling flags, labels and logs use ([0:0::1] is [::1]; localhost is its address).
  return { src: formatEndpoint(s), dst: formatEndpoint(d), hash, bucket, worker: o !== undefined && o < 0xfff0 && owner !== undefined ? o : null, backend };
}
