import { createReadStream } from 'node:fs';
import type { Digest, DigestFunction } from '../common/digest.js';

/** Digest of a file's contents, read as a stream (never held whole in memory). */
export async function digestFile(fn: DigestFunction, path: string, signal?: AbortSignal): Promise<Digest> {
  const hasher = await fn.createHasher();
  let sizeBytes = 0;
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20, signal })) {
    hasher.update(chunk as Buffer);
    sizeBytes += (chunk as Buffer).length;
  }
  return { hash: hasher.digest(), sizeBytes };
}
