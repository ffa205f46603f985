import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { clientsFor, type Clients } from '../helpers/clients.js';
import { peakRss, startRemex, type RemexProcess } from '../helpers/remex-process.js';

// Acceptance: uploading and then downloading a 2 GiB blob through ByteStream keeps the
// server's peak RSS under 300 MB (blobs are streamed, never held whole).
const SIZE = 2 * 1024 * 1024 * 1024;
const CHUNK = 256 * 1024;
const RSS_LIMIT = 300 * 1000 * 1000;

let remex: RemexProcess;
let c: Clients;
const base = randomBytes(CHUNK);

/** Chunk i of the blob: a random block stamped with its index, so no two chunks repeat. */
function chunk(i: number): Buffer {
  const b = Buffer.from(base);
  b.writeUInt32BE(i, 0);
  return b;
}

beforeAll(async () => {
  remex = await startRemex();
  c = clientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
});

it(
  'round-trips a 2 GiB blob through ByteStream under 300 MB of server RSS',
  { timeout: 600_000 },
  async () => {
    const chunks = SIZE / CHUNK;
    const h = createHash('sha256');
    for (let i = 0; i < chunks; i++) h.update(chunk(i));
    const hash = h.digest('hex');

    const committed = await new Promise<number>((resolve, reject) => {
      const stream = c.byteStream.write((err, res) => (err ? reject(err) : resolve(res!.committedSize)));
      const name = `uploads/${randomUUID()}/blobs/${hash}/${SIZE}`;
      (async () => {
        for (let i = 0; i < chunks; i++) {
          const ok = stream.write({
            resourceName: i === 0 ? name : '',
            writeOffset: i * CHUNK,
            finishWrite: i === chunks - 1,
            data: chunk(i),
          });
          if (!ok) await once(stream, 'drain');
        }
        stream.end();
      })().catch(reject);
    });
    expect(committed).toBe(SIZE);
    const afterUpload = await peakRss(remex.child.pid!);

    const read = createHash('sha256');
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      const stream = c.byteStream.read({
        resourceName: `blobs/${hash}/${SIZE}`,
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
    expect(received).toBe(SIZE);
    expect(read.digest('hex')).toBe(hash);
    const peak = await peakRss(remex.child.pid!);
    console.log(
      `server peak RSS: ${(afterUpload / 1e6).toFixed(0)} MB after upload, ${(peak / 1e6).toFixed(0)} MB after download`,
    );
    expect(peak).toBeLessThan(RSS_LIMIT);
  },
);
