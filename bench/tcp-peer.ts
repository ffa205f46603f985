// One end of the plain TCP socket pair that measures loopback throughput between two
// processes (bench/limits.ts starts one `sink` and one `source`).
//   sink:   listens on 127.0.0.1, prints {"port"}, counts the bytes of one connection and
//           prints {"bytes","ms"} from its first byte to its end.
//   source: connects to the port and sends `bytes` bytes in `chunk`-byte writes.
import { createServer, connect } from 'node:net';
import { once } from 'node:events';
import { randomBytes } from 'node:crypto';
import { now } from './lib/stats.js';

const [mode, arg1, arg2, arg3] = process.argv.slice(2);

if (mode === 'sink') {
  const server = createServer((socket) => {
    let bytes = 0;
    let first = 0;
    socket.on('data', (c: Buffer) => {
      if (bytes === 0) first = now();
      bytes += c.length;
    });
    socket.on('end', () => {
      console.log(JSON.stringify({ bytes, ms: now() - first }));
      server.close();
    });
  });
  server.listen(0, '127.0.0.1', () => {
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('no port');
    console.log(JSON.stringify({ port: addr.port }));
  });
} else if (mode === 'source') {
  const port = Number(arg1);
  const total = Number(arg2);
  const chunk = randomBytes(Number(arg3));
  const socket = connect(port, '127.0.0.1');
  await once(socket, 'connect');
  for (let sent = 0; sent < total;) {
    const piece = total - sent >= chunk.length ? chunk : chunk.subarray(0, total - sent);
    sent += piece.length;
    if (!socket.write(piece)) await once(socket, 'drain');
  }
  socket.end();
  await once(socket, 'close');
} else {
  throw new Error(`usage: tcp-peer.ts sink | source PORT BYTES CHUNK (got ${mode})`);
}
