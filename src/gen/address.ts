/**
 * Endpoint parsing and the local resources a flow set needs (one source address:port, hence one socket
 * and one file descriptor, per flow).
 */
import fs from 'node:fs';
import net from 'node:net';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { GenError } from './errors.js';

export interface HostPort {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/** Largest K for `--src-addrs K`: sources are 127.0.0.1 .. 127.0.0.K. */
export const MAX_SRC_ADDRS = 254;

/** Descriptors kept free for everything that is not a flow socket (stdio, IPC, files, the event loop). */
export const RESERVED_FDS = 64;

/**
 * Parses `HOST:PORT`, `[V6]:PORT` or `V6` with a trailing `:PORT` only when bracketed. `localhost` maps to
 * 127.0.0.1 so that a flow set's source addresses (127.0.0.x) match the target's family without DNS.
 * `allowPortZero` is for listeners (port 0 = any free port).
 */
export function parseHostPort(spec: string, what: string, allowPortZero = false): HostPort {
  let host: string;
  let portText: string;
  const bracketed = /^\[([^\]]+)\]:(\d+)$/.exec(spec);
  if (bracketed) {
    host = bracketed[1]!;
    portText = bracketed[2]!;
  } else {
    const colon = spec.lastIndexOf(':');
    if (colon <= 0 || spec.indexOf(':') !== colon) {
      throw new GenError('ERR_GEN_OPTION', `${what}: expected HOST:PORT or [IPv6]:PORT, got "${spec}"`);
    }
    host = spec.slice(0, colon);
    portText = spec.slice(colon + 1);
  }
  if (host === 'localhost') host = '127.0.0.1';
  const family = net.isIP(host);
  if (family === 0) {
    throw new GenError('ERR_GEN_OPTION', `${what}: "${host}" is not an IP address (names other than localhost are not resolved)`);
  }
  const port = /^\d+$/.test(portText) ? Number(portText) : NaN;
  if (!Number.isInteger(port) || port > 65535 || port < (allowPortZero ? 0 : 1)) {
    throw new GenError('ERR_GEN_OPTION', `${what}: bad port "${portText}"`);
  }
  return { host, port, family: family as 4 | 6 };
}

export function formatHostPort(ep: { host: string; port: number }): string {
  return net.isIPv6(ep.host) ? `[${ep.host}]:${ep.port}` : `${ep.host}:${ep.port}`;
}

/**
 * Source address of flow `flowId` when flows are spread over `srcAddrs` loopback addresses. Every address
 * in 127.0.0.0/8 is local on Linux, so binding 127.0.0.K needs no setup. An IPv6 target has only ::1.
 */
export function sourceAddressOf(flowId: number, srcAddrs: number, family: 4 | 6): string {
  if (family === 6) return '::1';
  return `127.0.0.${1 + (flowId % srcAddrs)}`;
}

/** The soft limit on open files of this process, or null where /proc is not there to say. */
export function openFileLimit(): number | null {
  try {
    const text = fs.readFileSync('/proc/self/limits', 'utf8');
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(text);
    if (!m) return null;
    return m[1] === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(m[1]);
  } catch {
    return null;
  }
}

/** Size of the kernel's ephemeral port range (each source address can hold at most this many flows). */
export function ephemeralPortCount(): number | null {
  try {
    const [lo, hi] = fs.readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
    return lo !== undefined && hi !== undefined && hi >= lo ? hi - lo + 1 : null;
  } catch {
    return null;
  }
}

/**
 * Throws a GenError naming the limit and the way round it when one process cannot hold `flowsPerProc`
 * sockets, or the source addresses do not have enough ephemeral ports for `flows`.
 */
export function checkFlowCapacity(flows: number, flowsPerProc: number, srcAddrs: number, family: 4 | 6): void {
  const fdLimit = openFileLimit();
  if (fdLimit !== null && flowsPerProc + RESERVED_FDS > fdLimit) {
    const maxPerProc = Math.max(0, fdLimit - RESERVED_FDS);
    throw new GenError(
      'ERR_GEN_RESOURCE',
      `${flowsPerProc} flows in one process need ${flowsPerProc} sockets but the open-file limit is ${fdLimit} ` +
        `(${maxPerProc} usable): raise it (ulimit -n) or use --procs ${Math.ceil(flows / Math.max(1, maxPerProc))} or more`,
    );
  }
  const ports = ephemeralPortCount();
  const addrs = family === 6 ? 1 : srcAddrs;
  if (ports !== null && Math.ceil(flows / addrs) > ports) {
    throw new GenError(
      'ERR_GEN_RESOURCE',
      `${flows} flows over ${addrs} source address(es) need ${Math.ceil(flows / addrs)} ports per address but the ` +
        `ephemeral range has ${ports}: use --src-addrs ${Math.ceil(flows / ports)} or more` +
        (family === 6 ? ' (IPv4 only: an IPv6 target uses ::1 alone)' : ''),
    );
  }
}

/**
 * Absolute path of a compiled sibling module (a child process entry point). Under vitest this module runs
 * from src/gen/*.ts, where no .js sibling exists, so it falls back to the same file under dist/.
 */
export function compiledSibling(metaUrl: string, name: string): string {
  const direct = fileURLToPath(new URL(`./${name}.js`, metaUrl));
  if (fs.existsSync(direct)) return direct;
  const here = fileURLToPath(metaUrl);
  const marker = `${'/'}src${'/'}gen${'/'}`;
  const at = here.lastIndexOf(marker);
  if (at >= 0) {
    const viaDist = `${here.slice(0, at)}/dist/src/gen/${name}.js`;
    if (fs.existsSync(viaDist)) return viaDist;
  }
  throw new GenError('ERR_GEN_BUILD', `cannot find ${name}.js next to ${pathToFileURL(here).href} nor under dist/: run npm run build`);
}
