import { createHash } from 'node:crypto';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { HookedFs } from '../../test/helpers/fs-hooks.js';
import { DiskKeyValueStore } from './disk-kv-store.js';
import type { KeyValueStore } from './kv-store.js';
import { MemoryKeyValueStore } from './memory-kv-store.js';

const ctx = {};
const newDir = () => mkdtemp(join(tmpdir(), 'remex-kv-'));

function kvContract(name: string, make: (maxBytes: number) => Promise<KeyValueStore>) {
  describe(`KeyValueStore contract: ${name}`, () => {
    it('stores, overwrites and misses', async () => {
      const kv = await make(1 << 20);
      expect(await kv.get('a', ctx)).toBeUndefined();
      await kv.put('a', Buffer.from('one'), ctx);
      await kv.put('a', Buffer.from('two'), ctx);
      expect((await kv.get('a', ctx))?.toString()).toBe('two');
      await kv.put('', Buffer.alloc(0), ctx);
      expect(await kv.get('', ctx)).toEqual(Buffer.alloc(0));
    });
    it('deletes an entry, and a missing one without complaint', async () => {
      const kv = await make(1 << 20);
      await kv.put('a', Buffer.from('one'), ctx);
      await kv.put('b', Buffer.from('two'), ctx);
      await kv.delete('a', ctx);
      await kv.delete('never-written', ctx);
      expect(await kv.get('a', ctx)).toBeUndefined();
      expect((await kv.get('b', ctx))?.toString()).toBe('two');
      await kv.put('a', Buffer.from('again'), ctx);
      expect((await kv.get('a', ctx))?.toString()).toBe('again');
    });
    it('drops the oldest entries beyond its budget', async () => {
      const kv = await make(2500);
      for (let i = 0; i < 5; i++) await kv.put(`k${i}`, Buffer.alloc(1000, i), ctx);
      expect(await kv.get('k0', ctx)).toBeUndefined();
      expect(await kv.get('k4', ctx)).toEqual(Buffer.alloc(1000, 4));
    });
  });
}

kvContract('memory', async (max) => new MemoryKeyValueStore(max));
kvContract('disk', async (max) => DiskKeyValueStore.open({ path: await newDir(), maxBytes: max }));

describe('DiskKeyValueStore', () => {
  it('keeps entries across a restart', async () => {
    const path = await newDir();
    const first = await DiskKeyValueStore.open({ path, maxBytes: 1 << 20 });
    await first.put('instance/sha256/abc', Buffer.from('result'), ctx);
    const second = await DiskKeyValueStore.open({ path, maxBytes: 1 << 20 });
    expect((await second.get('instance/sha256/abc', ctx))?.toString()).toBe('result');
  });
});

describe('DiskKeyValueStore: put and eviction of one key', () => {
  it('never leaves the index holding a key whose file eviction deleted', async () => {
    const path = await newDir();
    const fileOf = (key: string) => join(path, 'entries', createHash('sha256').update(key).digest('hex'));
    const hooked = new HookedFs();
    const kv = await DiskKeyValueStore.open({ path, maxBytes: 2500, fs: hooked });
    await kv.put('k0', Buffer.alloc(1000, 0), ctx);
    await kv.put('k1', Buffer.alloc(1000, 1), ctx);

    // A second put of k0 has renamed its file into place but not yet updated the index...
    const held = hooked.pauseAfter('rename', fileOf('k0'));
    const again = kv.put('k0', Buffer.alloc(1000, 7), ctx);
    await held.reached;
    // ...when a put of k2 evicts k0, the oldest entry.
    const third = kv.put('k2', Buffer.alloc(1000, 2), ctx);
    const renamed2 = hooked.pauseAfter('rename', fileOf('k2'));
    await renamed2.reached;
    renamed2.release();
    await new Promise(setImmediate); // k2 is indexed and the eviction has chosen k0
    held.release();
    await Promise.all([again, third]);

    // The second put of k0 finished last: it is there.
    expect(await kv.get('k0', ctx)).toEqual(Buffer.alloc(1000, 7));
    expect(await kv.get('k1', ctx)).toBeUndefined();
    expect(await kv.get('k2', ctx)).toEqual(Buffer.alloc(1000, 2));
  });
});
