// The separate client process of the CAS streaming scenario: writes one blob through
// ByteStream Write, then reads it back through ByteStream Read, verifying size and
// SHA-256 as a client does. Prints {"writeMs","readMs"}.
// Usage: stream-client.ts ADDRESS BYTES CHUNK
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { benchClients } from './lib/clients.js';
import { now } from './lib/stats.js';

const [address, sizeArg, chunkArg] = process.argv.slice(2);
const size = Number(sizeArg);
const chunkSize = Number(chunkArg);
if (!address || !(size > 0) || !(chunkSize > 0))
  throw new Error('usage: stream-client.ts ADDRESS BYTES CHUNK');

const base = randomBytes(chunkSize);
const chunks = Math.ceil(size / chunkSize);
/** Piece i of the blob: a random block stamped with its index, so no two pieces repeat. */
function piece(i: number): Buffer {
  const b = Buffer.from(base.subarray(0, Math.min(chunkSize, size - i * chunkSize)));
  b.writeUInt32BE(i, 0);
  return b;
}

// The digest is known before the upload starts, as for any client; not timed.
const h = createHash('sha256');
for (let i = 0; i < chunks; i++) h.update(piece(i));
const hash = h.digest('hex');

const clients = benchClients(address);

const writeStart = now();
const committed = await new Promise<number>((resolve, reject) => {
  const stream = clients.byteStream.write((err, res) => (err ? reject(err) : resolve(res!.committedSize)));
  const name = `uploads/${randomUUID()}/blobs/${hash}/${size}`;
  (async () => {
    for (let i = 0; i < chunks; i++) {
      const ok = stream.write({
        resourceName: i === 0 ? name : '',
        writeOffset: i * chunkSize,
        finishWrite: i === chunks - 1,
        data: piece(i),
      });
      if (!ok) await once(stream, 'drain');
    }
    stream.end();
  })().catch(reject);
});
const writeMs = now() - writeStart;
if (committed !== size) throw new Error(`Write committed ${committed} of ${size} bytes`);

const readStart = now();
const read = createHash('sha256');
let received = 0;
await new Promise<void>((resolve, reject) => {
  const stream = clients.byteStream.read({
    resourceName: `blobs/${hash}/${size}`,
    readOffset: 0,
    readLimit: 0,
  });
  stream.on('data', (r: { data: Buffer }) => {
    read.update(r.data);
    received += r.data.length;
  });
  stream.on('end', resolve);
  stream.on('error', reject);
});
const readHash = read.digest('hex');
const readMs = now() - readStart;
if (received !== size || readHash !== hash) {
  throw new Error(
    `Read returned ${received} bytes hashing to ${readHash}, expected ${size} bytes hashing to ${hash}`,
  );
}
clients.close();
console.log(JSON.stringify({ writeMs, readMs }));
