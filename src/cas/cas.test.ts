import { existsSync } from 'node:fs';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Code, RemexError } from '../common/status.js';
import type { BlobKey, BlobStore } from './blob-store.js';
import { keyFor } from './blob-store.contract.js';
import { Cas } from './cas.js';
import { DiskBlobStore } from './disk-blob-store.js';
import { MemoryBlobStore } from './memory-blob-store.js';
import { readAll } from './stream-utils.js';

const ctx = {};
const casOver = (store: BlobStore) => new Cas(store, { maxBatchTotalSizeBytes: 1 << 20 });
const diskStore = async () =>
  DiskBlobStore.open({ path: await mkdtemp(join(tmpdir(), 'remex-cas-')), maxBytes: 1 << 20 });

/** Writes a spool file as the upload manager does, returning it with its digest. */
async function spool(data: Buffer): Promise<{ path: string; key: BlobKey }> {
  const path = join(await mkdtemp(join(tmpdir(), 'remex-spool-')), 'upload');
  await writeFile(path, data);
  return { path, key: await keyFor(data) };
}

async function rejection(p: Promise<unknown>): Promise<RemexError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RemexError);
  return err as RemexError;
}

describe('Cas.putVerified from a buffer', () => {
  it('stores content that matches its digest', async () => {
    const cas = casOver(new MemoryBlobStore(1 << 20));
    const data = Buffer.from('in memory');
    const key = await keyFor(data);
    await cas.putVerified(key, data, ctx);
    expect((await cas.getBuffer(key, ctx)).equals(data)).toBe(true);
  });

  it.each([
    [
      'hash',
      (k: BlobKey) => ({ ...k, hash: 'a'.repeat(64) }),
      /has hash [0-9a-f]{64}: content does not match digest$/,
    ],
    [
      'size',
      (k: BlobKey) => ({ ...k, sizeBytes: k.sizeBytes + 1 }),
      /^blob [0-9a-f]{64}\/10 has 9 bytes, not 10$/,
    ],
  ])('rejects a wrong %s with INVALID_ARGUMENT and stores nothing', async (_what, wrong, message) => {
    const store = new MemoryBlobStore(1 << 20);
    const data = Buffer.from('in memory');
    const key = wrong(await keyFor(data));
    const err = await rejection(casOver(store).putVerified(key, data, ctx));
    expect(err.code).toBe(Code.INVALID_ARGUMENT);
    expect(err.message).toMatch(message);
    expect(store.sizeBytes).toBe(0);
  });
});

describe('Cas.putVerified from a spooled file', () => {
  it('moves the file into a disk store without reading it', async () => {
    const store = await diskStore();
    const data = Buffer.from('spooled upload');
    const { path, key } = await spool(data);
    await casOver(store).putVerified(key, { path, actual: key }, ctx);
    expect(existsSync(path)).toBe(false);
    expect((await readAll(await store.get(key, undefined, ctx))).equals(data)).toBe(true);
  });

  it('streams the file into a store that cannot take files, then deletes it', async () => {
    const store = new MemoryBlobStore(1 << 20);
    const data = Buffer.from('spooled upload for memory');
    const { path, key } = await spool(data);
    await casOver(store).putVerified(key, { path, actual: key }, ctx);
    expect(existsSync(path)).toBe(false);
    expect((await readAll(await store.get(key, undefined, ctx))).equals(data)).toBe(true);
  });

  it('checks the digest its writer computed rather than hashing the spool again', async () => {
    const store = new MemoryBlobStore(1 << 20);
    const { path, key } = await spool(Buffer.from('actual content'));
    const claimed = await keyFor(Buffer.from('claims content'));
    await casOver(store).putVerified(claimed, { path, actual: claimed }, ctx);
    expect(await store.findMissing([claimed, key], ctx)).toEqual([key]);
  });

  it.each([
    ['hash', { hash: 'b'.repeat(64), sizeBytes: 14 }, /has hash b{64}: content does not match digest$/],
    ['size', { hash: 'b'.repeat(64), sizeBytes: 9 }, /^blob [0-9a-f]{64}\/14 has 9 bytes, not 14$/],
  ])(
    'rejects a wrong %s with INVALID_ARGUMENT, stores nothing and deletes the spool',
    async (_what, actual, message) => {
      const store = await diskStore();
      const { path, key } = await spool(Buffer.from('spooled upload'));
      const err = await rejection(casOver(store).putVerified(key, { path, actual }, ctx));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toMatch(message);
      expect(existsSync(path)).toBe(false);
      expect(await store.findMissing([key], ctx)).toEqual([key]);
    },
  );

  it('deletes the spool of the empty blob, which is never stored', async () => {
    const store = new MemoryBlobStore(1 << 20);
    const { path, key } = await spool(Buffer.alloc(0));
    await casOver(store).putVerified(key, { path, actual: key }, ctx);
    expect(existsSync(path)).toBe(false);
    expect(store.sizeBytes).toBe(0);
  });

  it('deletes the spool when the store fails', async () => {
    const store = new MemoryBlobStore(4, 'tiny');
    const { path, key } = await spool(Buffer.from('too large for the store'));
    const err = await rejection(casOver(store).putVerified(key, { path, actual: key }, ctx));
    expect(err.code).toBe(Code.RESOURCE_EXHAUSTED);
    expect(existsSync(path)).toBe(false);
  });
});
