import { addAbortSignal, pipeline, type Readable } from 'node:stream';
import { invalidArgument, outOfRange } from '../common/status.js';
import { describeKey, type BlobKey } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import type { Cas } from './cas.js';
import { CompressorValue, zstdCompressStream } from './compression.js';

export interface BlobReadRequest {
  key: BlobKey;
  /** IDENTITY for a blobs/ resource, ZSTD for compressed-blobs/zstd/. */
  compressor: CompressorValue;
  /** read_offset: blob bytes, or compressed bytes for a compressed read. */
  offset: number;
  /** read_limit in the same unit; 0 reads to the end. */
  limit: number;
  /** Largest piece yielded (the caller's message size). */
  maxChunkBytes: number;
}

/**
 * ByteStream Read semantics: a blob, or the range of it that offset and limit select,
 * as pieces of at most maxChunkBytes. A plain read hands the range to the store (a
 * ranged file read or S3 GET); a compressed read compresses from the start of the blob
 * and skips, since offsets then count compressed bytes.
 *
 * Every stage is destroyed when the read ends early (read_limit reached, the consumer
 * stopped, the call's signal aborted) or any stage fails: the disk store pins a blob
 * against eviction while a stream of it is open, and a store error must end the read
 * rather than leave the compressor waiting for input that never comes.
 */
export async function* readBlob(cas: Cas, req: BlobReadRequest, ctx: StoreContext): AsyncGenerator<Buffer> {
  const { key, offset, limit } = req;
  if (offset < 0) throw outOfRange(`read_offset ${offset} is negative`);
  if (limit < 0) throw invalidArgument(`read_limit ${limit} is negative`);
  const compressed = req.compressor !== CompressorValue.IDENTITY;
  if (!compressed && offset > key.sizeBytes) {
    throw outOfRange(`read_offset ${offset} is past the end of ${describeKey(key)}`);
  }
  const source = await cas.read(key, compressed ? undefined : { offset, limit }, ctx);
  if (ctx.signal) addAbortSignal(ctx.signal, source);
  // pipeline, not pipe: an error or early end of either stage destroys the other.
  const stages: Readable[] = compressed
    ? [source, pipeline(source, zstdCompressStream(), () => {})]
    : [source];
  let skip = compressed ? offset : 0;
  let left = compressed && limit > 0 ? limit : Infinity;
  try {
    for await (const piece of stages.at(-1)!) {
      let chunk = piece as Buffer;
      if (skip > 0) {
        const n = Math.min(skip, chunk.length);
        chunk = chunk.subarray(n);
        skip -= n;
      }
      if (chunk.length > left) chunk = chunk.subarray(0, left);
      left -= chunk.length;
      for (let i = 0; i < chunk.length; i += req.maxChunkBytes) {
        yield chunk.subarray(i, i + req.maxChunkBytes);
      }
      if (left <= 0) break;
    }
  } finally {
    // At once, not when pipeline gets round to it: the read is over for the caller.
    for (const stage of stages) stage.destroy();
  }
  if (skip > 0) throw outOfRange(`read_offset ${offset} is past the end of the compressed blob`);
}
