import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { Code, RemexError } from '../common/status.js';
import type { BlobKey } from './blob-store.js';
import { keyFor } from './blob-store.contract.js';
import { readBlob, type BlobReadRequest } from './blob-reader.js';
import { Cas } from './cas.js';
import { CompressorValue, zstdDecompressBuffer } from './compression.js';
import { MemoryBlobStore } from './memory-blob-store.js';

const ctx = {};
const data = Buffer.from('compressible content '.repeat(50_000)); // ~1 MiB

async function setup(): Promise<{ cas: Cas; key: BlobKey }> {
  const cas = new Cas(new MemoryBlobStore(8 << 20), { maxBatchTotalSizeBytes: 1 << 20 });
  const key = await keyFor(data);
  await cas.store.put(key, Readable.from([data]), ctx);
  return { cas, key };
}

async function collect(cas: Cas, req: BlobReadRequest): Promise<Buffer[]> {
  const pieces: Buffer[] = [];
  for await (const piece of readBlob(cas, req, ctx)) pieces.push(piece);
  return pieces;
}

async function failure(cas: Cas, req: BlobReadRequest): Promise<RemexError> {
  const err = await collect(cas, req).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RemexError);
  return err as RemexError;
}

const plain = { compressor: CompressorValue.IDENTITY, offset: 0, limit: 0, maxChunkBytes: 1 << 20 };
const zstd = { ...plain, compressor: CompressorValue.ZSTD };

describe('readBlob', () => {
  it('reads a plain range and cuts it into pieces of at most maxChunkBytes', async () => {
    const { cas, key } = await setup();
    const pieces = await collect(cas, { ...plain, key, offset: 5, limit: 100_000, maxChunkBytes: 30_000 });
    expect(pieces.map((p) => p.length)).toEqual([30_000, 30_000, 30_000, 10_000]);
    expect(Buffer.concat(pieces).equals(data.subarray(5, 100_005))).toBe(true);
  });

  it('counts a compressed read’s offset and limit in compressed bytes', async () => {
    const { cas, key } = await setup();
    const whole = Buffer.concat(await collect(cas, { ...zstd, key }));
    expect((await zstdDecompressBuffer(whole, data.length)).equals(data)).toBe(true);
    const middle = Buffer.concat(await collect(cas, { ...zstd, key, offset: 10, limit: 20 }));
    expect(middle.equals(whole.subarray(10, 30))).toBe(true);
    const tail = Buffer.concat(await collect(cas, { ...zstd, key, offset: whole.length - 3 }));
    expect(tail.equals(whole.subarray(-3))).toBe(true);
  });

  it('answers the empty blob without the store', async () => {
    const { cas } = await setup();
    const empty = await keyFor(Buffer.alloc(0));
    expect(await collect(cas, { ...plain, key: empty })).toEqual([]);
  });

  it.each([
    ['a negative offset', { offset: -1 }, Code.OUT_OF_RANGE, 'read_offset -1 is negative'],
    ['a negative limit', { limit: -2 }, Code.INVALID_ARGUMENT, 'read_limit -2 is negative'],
  ])('rejects %s', async (_what, change, code, message) => {
    const { cas, key } = await setup();
    const err = await failure(cas, { ...plain, key, ...change });
    expect(err.code).toBe(code);
    expect(err.message).toBe(message);
  });

  it('rejects a plain offset past the end with OUT_OF_RANGE', async () => {
    const { cas, key } = await setup();
    const err = await failure(cas, { ...plain, key, offset: data.length + 1 });
    expect(err.code).toBe(Code.OUT_OF_RANGE);
    expect(err.message).toBe(`read_offset ${data.length + 1} is past the end of ${key.hash}/${data.length}`);
  });

  it('rejects a compressed offset past the end of the compressed stream with OUT_OF_RANGE', async () => {
    const { cas, key } = await setup();
    const err = await failure(cas, { ...zstd, key, offset: data.length });
    expect(err.code).toBe(Code.OUT_OF_RANGE);
    expect(err.message).toBe(`read_offset ${data.length} is past the end of the compressed blob`);
  });

  it('answers NOT_FOUND for an absent blob', async () => {
    const { cas } = await setup();
    const err = await failure(cas, { ...zstd, key: await keyFor(Buffer.from('absent')) });
    expect(err.code).toBe(Code.NOT_FOUND);
  });
});
