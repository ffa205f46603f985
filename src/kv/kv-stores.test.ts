import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
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
