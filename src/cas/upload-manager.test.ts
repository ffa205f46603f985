import { mkdir, mkdtemp, readdir, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Code, RemexError } from '../common/status.js';
import type { BlobKey } from './blob-store.js';
import { keyFor } from './blob-store.contract.js';
import { Cas } from './cas.js';
import { CompressorValue } from './compression.js';
import { MemoryBlobStore } from './memory-blob-store.js';
import type { BlobResource } from './resource-name.js';
import { UploadManager, type WriteChunk } from './upload-manager.js';

const ctx = {};

async function setup() {
  const store = new MemoryBlobStore(8 << 20);
  const spoolDir = await mkdtemp(join(tmpdir(), 'remex-uploads-'));
  const uploads = await UploadManager.create(new Cas(store, { maxBatchTotalSizeBytes: 1 << 20 }), {
    spoolDir,
    idleTimeoutMs: 60_000,
  });
  return { store, spoolDir, uploads };
}

const resourceFor = (key: BlobKey, id: string): BlobResource => ({
  instanceName: '',
  key,
  compressor: CompressorValue.IDENTITY,
  uploadId: `uploads/${id}/blobs/${key.hash}/${key.sizeBytes}`,
});

/** One Write stream carrying `data` from `offset`, in two chunks, finished or not. */
function stream(data: Buffer, offset: number, finish: boolean): [WriteChunk, AsyncIterator<WriteChunk>] {
  const half = Math.floor(data.length / 2);
  const chunks: WriteChunk[] = [
    { writeOffset: offset, finishWrite: false, data: data.subarray(0, half) },
    { writeOffset: offset + half, finishWrite: finish, data: data.subarray(half) },
  ];
  const rest = (async function* () {
    yield* chunks.slice(1);
  })();
  return [chunks[0]!, rest];
}

async function rejection(p: Promise<unknown>): Promise<RemexError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RemexError);
  return err as RemexError;
}

describe('UploadManager', () => {
  it('at start-up removes the spools of an earlier run and nothing else in its directory', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'remex-spool-'));
    await mkdir(join(dir, 'cas'));
    await writeFile(join(dir, 'cas', 'blob'), 'keep');
    await writeFile(join(dir, 'remex.yaml'), 'keep');
    await writeFile(join(dir, '0123456789abcdef01234567.upload'), 'stale');
    await writeFile(join(dir, '0123456789abcdef01234568'), 'stale, older naming');
    await UploadManager.create(new Cas(new MemoryBlobStore(1 << 20), { maxBatchTotalSizeBytes: 1 << 20 }), {
      spoolDir: dir,
      idleTimeoutMs: 60_000,
    });
    expect((await readdir(dir)).sort()).toEqual(['cas', 'remex.yaml']);
    expect(await readFile(join(dir, 'cas', 'blob'), 'utf8')).toBe('keep');
  });

  it('keeps a Write stream that ended without finish_write, and completes it on resumption', async () => {
    const { store, uploads } = await setup();
    const data = Buffer.alloc(200_000, 1);
    const key = await keyFor(data);
    const resource = resourceFor(key, 'resumed');
    const err = await rejection(uploads.write(resource, ...stream(data.subarray(0, 100_000), 0, false), ctx));
    expect(err.code).toBe(Code.INVALID_ARGUMENT);
    expect(err.message).toBe(
      `the Write stream for ${key.hash}/200000 ended without finish_write after 100000 bytes; resume from there`,
    );
    expect(await uploads.status(resource, ctx)).toEqual({ committedSize: 100_000, complete: false });
    expect(await uploads.write(resource, ...stream(data.subarray(100_000), 100_000, true), ctx)).toBe(
      200_000,
    );
    expect(await store.findMissing([key], ctx)).toEqual([]);
    expect(uploads.size).toBe(0);
  });

  it.each([
    [
      'hash',
      (k: BlobKey) => ({ ...k, hash: 'c'.repeat(64) }),
      /has hash [0-9a-f]{64}: content does not match digest$/,
    ],
    [
      'size',
      (k: BlobKey) => ({ ...k, sizeBytes: k.sizeBytes + 5 }),
      /^blob [0-9a-f]{64}\/200005 has 200000 bytes, not 200005$/,
    ],
  ])(
    'drops an upload whose %s is wrong: INVALID_ARGUMENT, no spool, nothing stored',
    async (_what, wrong, message) => {
      const { store, spoolDir, uploads } = await setup();
      const data = Buffer.alloc(200_000, 2);
      const key = wrong(await keyFor(data));
      const resource = resourceFor(key, 'wrong');
      const err = await rejection(uploads.write(resource, ...stream(data, 0, true), ctx));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toMatch(message);
      expect(await uploads.status(resource, ctx)).toBeUndefined();
      expect(await readdir(spoolDir)).toEqual([]);
      expect(store.sizeBytes).toBe(0);
    },
  );
});
