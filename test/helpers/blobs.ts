import { createHash, randomUUID } from 'node:crypto';
import type { ServiceError } from '@grpc/grpc-js';
import type { Clients } from './clients.js';

export const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
export const digestOf = (data: Buffer | string) => ({
  hash: sha256(data),
  sizeBytes: Buffer.byteLength(data),
});

/** Writes a blob through ByteStream in chunks; resolves to committed_size. */
export function writeBlob(
  clients: Clients,
  data: Buffer,
  opts: { resourceName?: string; chunk?: number; instance?: string } = {},
): Promise<number> {
  const d = digestOf(data);
  const prefix = opts.instance ? `${opts.instance}/` : '';
  const name = opts.resourceName ?? `${prefix}uploads/${randomUUID()}/blobs/${d.hash}/${d.sizeBytes}`;
  const chunk = opts.chunk ?? 64 * 1024;
  return new Promise((resolve, reject) => {
    const stream = clients.byteStream.write((err, res) => (err ? reject(err) : resolve(res!.committedSize)));
    let offset = 0;
    do {
      const piece = data.subarray(offset, offset + chunk);
      stream.write({
        resourceName: offset === 0 ? name : '',
        writeOffset: offset,
        finishWrite: offset + piece.length >= data.length,
        data: piece,
      });
      offset += piece.length;
    } while (offset < data.length);
    stream.end();
  });
}

/** Reads a blob (or a range) through ByteStream. */
export function readBlob(
  clients: Clients,
  resourceName: string,
  readOffset = 0,
  readLimit = 0,
): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const stream = clients.byteStream.read({ resourceName, readOffset, readLimit });
    stream.on('data', (r: { data: Buffer }) => parts.push(r.data));
    stream.on('error', reject);
    stream.on('end', () => resolve(Buffer.concat(parts)));
  });
}

/** The error a promise rejects with, for asserting codes and messages. */
export async function errorOf(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('expected the call to fail, but it succeeded');
}
