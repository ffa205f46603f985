import { describe, expect, it } from 'vitest';
import { Readable } from 'node:stream';
import { Code, RemexError } from '../common/status.js';
import { BLAKE3, SHA256, digestOf, type DigestFunction } from '../common/digest.js';
import type { BlobKey, BlobStore } from './blob-store.js';
import { readAll } from './stream-utils.js';

const ctx = {};

export async function keyFor(data: Buffer, fn: DigestFunction = SHA256): Promise<BlobKey> {
  return { fn, ...(await digestOf(fn, data)) };
}

/**
 * The storage contract every BlobStore backend and composition must keep.
 * Call from a *.test.ts file with a factory that returns a fresh, empty store.
 */
export function blobStoreContract(name: string, makeStore: () => Promise<BlobStore>): void {
  describe(`BlobStore contract: ${name}`, () => {
    it('stores a blob and reads it back whole and by range', async () => {
      const store = await makeStore();
      const data = Buffer.from('the quick brown fox jumps over the lazy dog');
      const key = await keyFor(data);
      await store.put(key, Readable.from([data.subarray(0, 10), data.subarray(10)]), ctx);
      expect(await readAll(await store.get(key, undefined, ctx))).toEqual(data);
      expect((await readAll(await store.get(key, { offset: 4, limit: 5 }, ctx))).toString()).toBe('quick');
      expect((await readAll(await store.get(key, { offset: 40 }, ctx))).toString()).toBe('dog');
      expect((await readAll(await store.get(key, { offset: data.length }, ctx))).length).toBe(0);
    });

    it('answers NOT_FOUND for an absent blob', async () => {
      const store = await makeStore();
      const key = await keyFor(Buffer.from('absent'));
      await expect(store.get(key, undefined, ctx)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    });

    it('findMissing returns exactly the absent keys', async () => {
      const store = await makeStore();
      const present: BlobKey[] = [];
      const absent: BlobKey[] = [];
      for (let i = 0; i < 50; i++) {
        const data = Buffer.from(`blob ${i}`);
        const key = await keyFor(data);
        if (i % 2 === 0) {
          await store.put(key, Readable.from([data]), ctx);
          present.push(key);
        } else {
          absent.push(key);
        }
      }
      const missing = await store.findMissing([...present, ...absent], ctx);
      expect(missing.map((k) => k.hash).sort()).toEqual(absent.map((k) => k.hash).sort());
    });

    it('keeps digest functions apart', async () => {
      const store = await makeStore();
      const data = Buffer.from('same bytes, two functions');
      const sha = await keyFor(data, SHA256);
      const b3 = await keyFor(data, BLAKE3);
      await store.put(b3, Readable.from([data]), ctx);
      expect(await store.findMissing([sha, b3], ctx)).toEqual([sha]);
    });

    it('stores nothing when the stream fails midway', async () => {
      const store = await makeStore();
      const data = Buffer.alloc(300_000, 7);
      const key = await keyFor(data);
      const failing = new Readable({
        read() {
          this.push(data.subarray(0, 1000));
          this.destroy(new Error('client went away'));
        },
      });
      await expect(store.put(key, failing, ctx)).rejects.toBeInstanceOf(Error);
      expect(await store.findMissing([key], ctx)).toEqual([key]);
    });

    it('rejects a stream shorter than the digest size and stores nothing', async () => {
      const store = await makeStore();
      const data = Buffer.from('twelve bytes');
      const key = { ...(await keyFor(data)), sizeBytes: 20 };
      const err = await store.put(key, Readable.from([data]), ctx).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RemexError);
      expect((err as RemexError).code).toBe(Code.INVALID_ARGUMENT);
      expect(await store.findMissing([key], ctx)).toEqual([key]);
    });

    it('overwriting an existing blob is harmless', async () => {
      const store = await makeStore();
      const data = Buffer.from('twice');
      const key = await keyFor(data);
      await store.put(key, Readable.from([data]), ctx);
      await store.put(key, Readable.from([data]), ctx);
      expect(await readAll(await store.get(key, undefined, ctx))).toEqual(data);
    });

    it('streams a multi-megabyte blob in several chunks', async () => {
      const store = await makeStore();
      const data = Buffer.alloc(5 << 20);
      for (let i = 0; i < data.length; i++) data[i] = (i * 31) & 0xff;
      const key = await keyFor(data);
      await store.put(key, Readable.from([data.subarray(0, 1 << 20), data.subarray(1 << 20)]), ctx);
      const stream = await store.get(key, undefined, ctx);
      let chunks = 0;
      const parts: Buffer[] = [];
      for await (const c of stream) {
        chunks++;
        parts.push(c as Buffer);
      }
      expect(chunks).toBeGreaterThan(1);
      expect(Buffer.concat(parts).equals(data)).toBe(true);
    });
  });
}
