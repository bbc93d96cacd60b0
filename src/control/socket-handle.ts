/**
 * Reading control for dgram sockets whose handle is shared between processes.
 *
 * When a dgram socket is passed to another process (`worker.send(msg, socket)`), Node binds the received
 * handle and starts reading from it at once. A socket that several processes hold is read by whichever
 * process asks the kernel first, so every holder but one must stop reading: workers hold the front socket
 * only to send replies from the service's own address and port, and a proxy's upstream socket in transit
 * between workers must not be read by the process that passes it on (the kernel keeps the datagrams until
 * the new owner reads).
 *
 * Node 20 has no public send-only option; the handle's own recvStop()/recvStart() do it. The handle sits
 * behind dgram's internal state symbol (`socket._handle` is deprecated, DEP0112, and warns).
 * Both calls are synchronous, and a received handle starts reading in the same tick as the 'message'
 * event that delivers it, so stopping it inside that event handler loses nothing.
 */
import type dgram from 'node:dgram';

interface UdpHandle {
  recvStop(): number;
  recvStart(): number;
}

let stateSymbol: symbol | undefined;

function handleOf(socket: dgram.Socket): UdpHandle | null {
  if (stateSymbol === undefined) {
    stateSymbol = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'state symbol');
    if (stateSymbol === undefined) throw new Error('dgram internals changed: no state symbol on dgram.Socket');
  }
  const state = (socket as unknown as Record<symbol, { handle: UdpHandle | null; receiving: boolean }>)[stateSymbol];
  return state?.handle ?? null;
}

function setReceiving(socket: dgram.Socket, on: boolean): void {
  const state = (socket as unknown as Record<symbol, { receiving: boolean }>)[stateSymbol!];
  if (state) state.receiving = on;
}

/** Stops this process from reading the socket; sending still works. */
export function stopReading(socket: dgram.Socket): void {
  const h = handleOf(socket);
  if (h) { h.recvStop(); setReceiving(socket, false); }
}

export function startReading(socket: dgram.Socket): void {
  const h = handleOf(socket);
  if (h) { h.recvStart(); setReceiving(socket, true); }
}
