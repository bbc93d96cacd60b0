/**
 * Baselines, run as their own processes: a bare Node dgram receiver (counts only) and a single-process Node
 * dgram echo. Usage: node dist/bench/lib/plain-servers.js receiver|echo HOST
 * Prints "port N" on stdout once bound; prints its count on SIGTERM.
 */
import dgram from 'node:dgram';

const [mode = 'receiver', host = '127.0.0.1'] = process.argv.slice(2);
const socket = dgram.createSocket(host.includes(':') ? 'udp6' : 'udp4');
let count = 0;
if (mode === 'echo') {
  socket.on('message', (msg, rinfo) => { count++; socket.send(msg, rinfo.port, rinfo.address); });
} else {
  socket.on('message', () => { count++; });
}
socket.bind(0, host, () => {
  try { socket.setRecvBufferSize(8 * 1024 * 1024); } catch { /* capped */ }
  process.stdout.write(`port ${socket.address().port}\n`);
});
process.on('message', (m) => { if (m === 'count') process.send!({ count }); });
process.on('SIGTERM', () => { process.stdout.write(`count ${count}\n`); process.exit(0); });
