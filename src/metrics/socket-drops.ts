/**
 * Datagrams the kernel dropped at flowlb's front sockets before flowlb read them (the socket's receive buffer
 * was full: the primary fell behind), from the `drops` column of /proc/net/udp and /proc/net/udp6. These never
 * reach flowlb's own counters, so without this a burst lost in the kernel would be invisible.
 *
 * Read at scrape time only. Matched by local address and port (IPv6 too: by port alone, another program's socket
 * on the same port, e.g. another SIP service on another address, was counted, and the counter fell when it
 * closed). Returns null per listener when the file cannot be read (not Linux) or no socket matches.
 */
import fs from 'node:fs';
import type { Endpoint } from '../config.js';
import { parseIPv6Into } from '../datapath/tuple.js';

/** /proc/net/udp's local address for an IPv4 host: the 32-bit address in host (little-endian) order, hex. */
function procV4(host: string): string | null {
  const parts = host.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) return null;
  return parts.reverse().map((p) => p.toString(16).padStart(2, '0')).join('').toUpperCase();
}

/** /proc/net/udp6's local address: the 16 bytes as four 32-bit words, each in host (little-endian) order, hex. */
function procV6(host: string): string | null {
  const b = new Uint8Array(16);
  if (!parseIPv6Into(host, b, 0)) return null;
  let out = '';
  for (let w = 0; w < 16; w += 4) {
    for (let i = 3; i >= 0; i--) out += b[w + i]!.toString(16).padStart(2, '0');
  }
  return out.toUpperCase();
}

function readTable(file: string): string[] | null {
  try { return fs.readFileSync(file, 'utf8').split('\n').slice(1); } catch { return null; }
}

export function socketDrops(listeners: readonly Endpoint[]): (number | null)[] {
  const tables = new Map<4 | 6, string[] | null>();
  return listeners.map((l) => {
    if (!tables.has(l.family)) tables.set(l.family, readTable(l.family === 4 ? '/proc/net/udp' : '/proc/net/udp6'));
    const rows = tables.get(l.family);
    if (!rows) return null;
    const port = l.port.toString(16).toUpperCase().padStart(4, '0');
    const addr = l.family === 4 ? procV4(l.host) : procV6(l.host);
    let found = false, drops = 0;
    for (const row of rows) {
      const f = row.trim().split(/\s+/);
      if (f.length < 13) continue;
      const [a, p] = f[1]!.split(':') as [string, string];
      if (p !== port || (addr !== null && a !== addr)) continue;
      found = true;
      drops += Number(f[f.length - 1]) || 0;
    }
    return found ? drops : null;
  });
}
