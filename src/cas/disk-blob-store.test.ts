import { existsSync } from 'node:fs';
import { mkdtemp, readdir, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { HookedFs } from '../../test/helpers/fs-hooks.js';
import { keyFor } from './blob-store.contract.js';
import { DiskBlobStore } from './disk-blob-store.js';
import { readAll } from './stream-utils.js';
import type { BlobKey } from './blob-store.js';

/** Where the store keeps a sha256 blob. */
const fileOf = (path: string, key: BlobKey) =>
  join(path, 'cas', 'sha256', key.hash.slice(0, 2), `${key.hash}-${key.sizeBytes}`);

const ctx = {};

describe('DiskBlobStore', () => {
  it('keeps its blobs across a restart', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const data = Buffer.from('persistent');
    const key = await keyFor(data);
    const first = await DiskBlobStore.open({ path, maxBytes: 1 << 20 });
    await first.put(key, Readable.from([data]), ctx);
    const second = await DiskBlobStore.open({ path, maxBytes: 1 << 20 });
    expect(await second.findMissing([key], ctx)).toEqual([]);
    expect(await readAll(await second.get(key, undefined, ctx))).toEqual(data);
  });

  it('discards half-written files left by a crash', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    await DiskBlobStore.open({ path, maxBytes: 1 << 20 });
    // What a crash mid-write leaves: a partial file in tmp/, never in cas/.
    await writeFile(join(path, 'tmp', 'deadbeef.put'), 'partial');
    // And a file in cas/ whose length disagrees with its name is never served.
    const data = Buffer.from('truncated blob content');
    const key = await keyFor(data);
    await mkdir(join(path, 'cas', 'sha256', key.hash.slice(0, 2)), { recursive: true });
    await writeFile(
      join(path, 'cas', 'sha256', key.hash.slice(0, 2), `${key.hash}-${key.sizeBytes}`),
      'trunc',
    );
    const store = await DiskBlobStore.open({ path, maxBytes: 1 << 20 });
    expect(await readdir(join(path, 'tmp'))).toEqual([]);
    expect(await store.findMissing([key], ctx)).toEqual([key]);
  });

  it('evicts least recently used blobs beyond its budget', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const store = await DiskBlobStore.open({ path, maxBytes: 3000 });
    const keys = [];
    for (let i = 0; i < 3; i++) {
      const data = Buffer.alloc(1000, i);
      const key = await keyFor(data);
      await store.put(key, Readable.from([data]), ctx);
      keys.push(key);
    }
    // Touch the oldest so the second becomes least recently used.
    await readAll(await store.get(keys[0]!, undefined, ctx));
    const data = Buffer.alloc(1000, 9);
    const fourth = await keyFor(data);
    await store.put(fourth, Readable.from([data]), ctx);
    expect(await store.findMissing([...keys, fourth], ctx)).toEqual([keys[1]]);
    expect(store.sizeBytes).toBe(3000);
  });

  it('never evicts a blob while it is being read', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const store = await DiskBlobStore.open({ path, maxBytes: 4 << 20 });
    const big = Buffer.alloc(3 << 20, 1);
    const bigKey = await keyFor(big);
    await store.put(bigKey, Readable.from([big]), ctx);
    const reader = await store.get(bigKey, undefined, ctx);
    // Fill the budget while the read is open: the open blob must stay.
    const other = Buffer.alloc(2 << 20, 2);
    const otherKey = await keyFor(other);
    await store.put(otherKey, Readable.from([other]), ctx);
    expect(await store.findMissing([bigKey], ctx)).toEqual([]);
    expect((await readAll(reader)).equals(big)).toBe(true);
    // Once the reader is done, a write that needs the space may evict it.
    const third = Buffer.alloc(3 << 20, 3);
    await store.put(await keyFor(third), Readable.from([third]), ctx);
    expect(await store.findMissing([bigKey], ctx)).toEqual([bigKey]);
  });
});

describe('DiskBlobStore: commit and eviction of one blob', () => {
  it('never leaves the index saying present for a file eviction deleted', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const hooked = new HookedFs();
    const store = await DiskBlobStore.open({ path, maxBytes: 2000, fs: hooked });
    const [a, b, c] = [Buffer.alloc(1000, 1), Buffer.alloc(1000, 2), Buffer.alloc(1000, 3)];
    const [keyA, keyB, keyC] = await Promise.all([a, b, c].map((d) => keyFor(d)));
    await store.put(keyA!, Readable.from([a]), ctx);
    await store.put(keyB!, Readable.from([b]), ctx);

    // A second upload of A has renamed its file into place but not yet updated the index...
    const held = hooked.pauseAfter('rename', fileOf(path, keyA!));
    const again = store.put(keyA!, Readable.from([a]), ctx);
    await held.reached;
    // ...when a write of C evicts A, the least recently used blob.
    const third = store.put(keyC!, Readable.from([c]), ctx);
    const renamedC = hooked.pauseAfter('rename', fileOf(path, keyC!));
    await renamedC.reached;
    renamedC.release();
    await new Promise(setImmediate); // C is indexed and the eviction has chosen A
    expect(await store.findMissing([keyA!], ctx)).toEqual([keyA]);
    held.release();
    await Promise.all([again, third]);

    // The upload of A finished last: A is present in the index and on disk, and readable.
    expect(await store.findMissing([keyA!], ctx)).toEqual([]);
    expect(existsSync(fileOf(path, keyA!))).toBe(true);
    expect(await readAll(await store.get(keyA!, undefined, ctx))).toEqual(a);
    // And the index is the files: B made room for it.
    expect(await store.findMissing([keyA!, keyB!, keyC!], ctx)).toEqual([keyB]);
    expect([keyA!, keyB!, keyC!].map((k) => existsSync(fileOf(path, k)))).toEqual([true, false, true]);
    expect(store.sizeBytes).toBe(2000);
  });
});

describe('DiskBlobStore with fsync', () => {
  it('fsyncs the blob, then the directories whose entries name it, before it is visible', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const hooked = new HookedFs();
    const store = await DiskBlobStore.open({ path, maxBytes: 1 << 20, fsync: true, fs: hooked });
    const data = Buffer.from('durable');
    const key = await keyFor(data);
    const shard = dirname(fileOf(path, key));
    let indexedAtShardSync: boolean | undefined;
    hooked.onSync = (synced) => {
      if (synced === shard) indexedAtShardSync = store.sizeBytes > 0;
    };
    await store.put(key, Readable.from([data]), ctx);
    expect(indexedAtShardSync).toBe(false);
    // The written file; the new directories' parents (cas/sha256 and its shard are new); the shard.
    expect(hooked.synced[0]).toMatch(new RegExp(`^${join(path, 'tmp')}/`));
    expect(hooked.synced.slice(1).sort()).toEqual([join(path, 'cas'), join(path, 'cas', 'sha256'), shard]);

    // Again into a directory already made: the file and the shard only.
    hooked.synced.length = 0;
    await store.put(key, Readable.from([data]), ctx);
    expect(hooked.synced.slice(1)).toEqual([shard]);
  });

  it('fsyncs nothing without it', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const hooked = new HookedFs();
    const store = await DiskBlobStore.open({ path, maxBytes: 1 << 20, fs: hooked });
    const data = Buffer.from('volatile');
    await store.put(await keyFor(data), Readable.from([data]), ctx);
    expect(hooked.synced).toEqual([]);
  });
});

describe('DiskBlobStore.putFile', () => {
  it('copies a file from another filesystem (EXDEV) and removes the original', async () => {
    const path = await mkdtemp(join(tmpdir(), 'remex-disk-'));
    const store = await DiskBlobStore.open({ path, maxBytes: 1 << 20 });
    // /dev/shm is a tmpfs: a different filesystem from the store's.
    const other = await mkdtemp('/dev/shm/remex-exdev-');
    const data = Buffer.from('spooled elsewhere');
    const key = await keyFor(data);
    await writeFile(join(other, 'upload'), data);
    await store.putFile(key, join(other, 'upload'), ctx);
    expect(existsSync(join(other, 'upload'))).toBe(false);
    expect(await readAll(await store.get(key, undefined, ctx))).toEqual(data);
  });
});
