import { mkdtemp, readdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it, vi } from 'vitest';
import { renderMetrics } from '../common/metrics.js';
import { Code, RemexError } from '../common/status.js';
import { MemoryKeyValueStore } from '../kv/memory-kv-store.js';
import { MetricsKeyValueStore } from '../kv/metrics-kv-store.js';
import type { BlobKey, BlobStore } from './blob-store.js';
import { blobStoreContract, keyFor } from './blob-store.contract.js';
import { DiskBlobStore } from './disk-blob-store.js';
import { ExistenceCachingBlobStore } from './existence-caching-store.js';
import { MemoryBlobStore } from './memory-blob-store.js';
import { MetricsBlobStore } from './metrics-store.js';
import { SizePartitioningBlobStore } from './size-partitioning-store.js';
import { readAll } from './stream-utils.js';
import { TieredBlobStore } from './tiered-store.js';

const ctx = {};
const newDir = () => mkdtemp(join(tmpdir(), 'remex-comp-'));
const disk = async (name = 'disk', maxBytes = 64 << 20) =>
  DiskBlobStore.open({ path: await newDir(), maxBytes, name });
const memory = (name = 'memory', maxBytes = 64 << 20) => new MemoryBlobStore(maxBytes, name);
const put = (store: BlobStore, key: BlobKey, data: Buffer) => store.put(key, Readable.from([data]), ctx);
/** Byte equality: vitest's toEqual walks a large Buffer element by element, for seconds. */
const expectBytes = (actual: Buffer, expected: Buffer) => expect(actual.equals(expected)).toBe(true);
const patterned = (size: number, seed = 1) => {
  const b = Buffer.alloc(size);
  for (let i = 0; i < size; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
};

// The contract's blobs: "blob 0".."blob 9" are 6 bytes, "blob 10".."blob 49" are 7, so a
// 6-byte threshold splits its findMissing set across both children.
blobStoreContract(
  'size-partitioning(memory ≤ 6 B, disk)',
  async () => new SizePartitioningBlobStore(memory('small'), await disk('large'), 6),
);
blobStoreContract(
  'tiered(memory, disk)',
  async () => new TieredBlobStore(memory('fast'), await disk('slow')),
);
blobStoreContract(
  'tiered(memory of 1 MiB, disk): large blobs do not fit the fast store',
  async () => new TieredBlobStore(memory('fast', 1 << 20), await disk('slow')),
);
blobStoreContract(
  'existence-caching(memory)',
  async () => new ExistenceCachingBlobStore(memory(), 60_000, 10_000),
);
blobStoreContract('metrics(memory)', async () => new MetricsBlobStore(memory(), 'contract-metrics'));
blobStoreContract(
  'metrics(size-partitioning(existence-caching(memory), tiered(memory, disk)))',
  async () =>
    new MetricsBlobStore(
      new SizePartitioningBlobStore(
        new ExistenceCachingBlobStore(memory('small'), 60_000, 10_000),
        new TieredBlobStore(memory('fast'), await disk('slow')),
        6,
      ),
      'contract-nested',
    ),
);

/** A store whose every call fails with the given error. */
function failingStore(name: string, err: RemexError): BlobStore {
  return {
    name,
    get: async () => Promise.reject(err),
    put: async (_key, data) => {
      data.destroy();
      throw err;
    },
    findMissing: async () => Promise.reject(err),
  };
}

describe('SizePartitioningBlobStore', () => {
  it('stores each blob in the child for its size, the threshold itself in small', async () => {
    const small = memory('small');
    const large = memory('large');
    const store = new SizePartitioningBlobStore(small, large, 10);
    const atThreshold = await keyFor(Buffer.from('ten bytes!'));
    const above = await keyFor(Buffer.from('eleven byte'));
    await put(store, atThreshold, Buffer.from('ten bytes!'));
    await put(store, above, Buffer.from('eleven byte'));
    expect(await small.findMissing([atThreshold, above], ctx)).toEqual([above]);
    expect(await large.findMissing([atThreshold, above], ctx)).toEqual([atThreshold]);
    expect((await readAll(await store.get(above, undefined, ctx))).toString()).toBe('eleven byte');
  });

  it('splits findMissing into one call per child, and skips a child with nothing to ask', async () => {
    const small = memory('small');
    const large = memory('large');
    const store = new SizePartitioningBlobStore(small, large, 6);
    const smallSpy = vi.spyOn(small, 'findMissing');
    const largeSpy = vi.spyOn(large, 'findMissing');
    const tiny = [await keyFor(Buffer.from('a')), await keyFor(Buffer.from('b'))];
    const big = [await keyFor(Buffer.from('a longer one')), await keyFor(Buffer.from('another long'))];
    await put(store, tiny[0]!, Buffer.from('a'));
    await put(store, big[1]!, Buffer.from('another long'));

    const missing = await store.findMissing([tiny[0]!, big[0]!, tiny[1]!, big[1]!], ctx);
    expect(missing.map((k) => k.hash).sort()).toEqual([tiny[1]!.hash, big[0]!.hash].sort());
    expect(smallSpy).toHaveBeenCalledTimes(1);
    expect(smallSpy.mock.calls[0]![0]).toEqual(tiny);
    expect(largeSpy).toHaveBeenCalledTimes(1);
    expect(largeSpy.mock.calls[0]![0]).toEqual(big);

    await store.findMissing(tiny, ctx);
    expect(smallSpy).toHaveBeenCalledTimes(2);
    expect(largeSpy).toHaveBeenCalledTimes(1);
  });

  it('prefixes a child error with the child name and keeps its code', async () => {
    const down = new RemexError(Code.UNAVAILABLE, 'connection refused');
    const store = new SizePartitioningBlobStore(memory('small'), failingStore('s3', down), 6);
    const small = await keyFor(Buffer.from('tiny'));
    const big = await keyFor(Buffer.from('not so tiny'));
    await expect(store.findMissing([small, big], ctx)).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: 's3: connection refused',
    });
    await expect(store.get(big, undefined, ctx)).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: 's3: connection refused',
    });
    // The small side still works on its own.
    expect(await store.findMissing([small], ctx)).toEqual([small]);
  });

  it('putFile renames into a child that can, and streams into one that cannot', async () => {
    const small = memory('small');
    const large = await disk('large');
    const store = new SizePartitioningBlobStore(small, large, 6);
    const spool = await newDir();
    const tinyData = Buffer.from('tiny');
    const bigData = patterned(100_000);
    const tiny = await keyFor(tinyData);
    const big = await keyFor(bigData);
    await writeFile(join(spool, 'tiny'), tinyData);
    await writeFile(join(spool, 'big'), bigData);
    const diskPutFile = vi.spyOn(large, 'putFile');
    await store.putFile(tiny, join(spool, 'tiny'), ctx);
    await store.putFile(big, join(spool, 'big'), ctx);
    expect(diskPutFile).toHaveBeenCalledTimes(1);
    expect(await readdir(spool)).toEqual([]);
    expect(await small.findMissing([tiny], ctx)).toEqual([]);
    expectBytes(await readAll(await store.get(big, undefined, ctx)), bigData);
  });
});

describe('TieredBlobStore', () => {
  it('put writes both stores', async () => {
    const fast = memory('fast');
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const data = patterned(3 << 20);
    const key = await keyFor(data);
    await store.put(key, Readable.from([data.subarray(0, 1000), data.subarray(1000)]), ctx);
    expect(await fast.findMissing([key], ctx)).toEqual([]);
    expect(await slow.findMissing([key], ctx)).toEqual([]);
  });

  it('populates the fast store on a slow hit, then serves from it', async () => {
    const fast = memory('fast');
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const data = patterned(3 << 20);
    const key = await keyFor(data);
    await put(slow, key, data);

    expectBytes(await readAll(await store.get(key, undefined, ctx)), data);
    await store.settled();
    expect(await fast.findMissing([key], ctx)).toEqual([]);

    const slowGet = vi.spyOn(slow, 'get');
    expectBytes(await readAll(await store.get(key, { offset: 5, limit: 10 }, ctx)), data.subarray(5, 15));
    expect(slowGet).not.toHaveBeenCalled();
  });

  it('serves a ranged read from the slow store and copies the whole blob in the background', async () => {
    const fast = memory('fast');
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const data = patterned(100_000);
    const key = await keyFor(data);
    await put(slow, key, data);
    expectBytes(
      await readAll(await store.get(key, { offset: 1000, limit: 50 }, ctx)),
      data.subarray(1000, 1050),
    );
    await store.settled();
    expectBytes(await readAll(await fast.get(key, undefined, ctx)), data);
  });

  it('still answers from the slow store when the fast store has evicted a blob', async () => {
    const fast = memory('fast', 1500);
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const a = patterned(1000, 1);
    const b = patterned(1000, 2);
    const ka = await keyFor(a);
    const kb = await keyFor(b);
    await put(store, ka, a);
    await put(store, kb, b);
    expect(await fast.findMissing([ka, kb], ctx)).toEqual([ka]);
    expect(await store.findMissing([ka, kb], ctx)).toEqual([]);
    expectBytes(await readAll(await store.get(ka, undefined, ctx)), a);
  });

  it('asks only the slow store in findMissing', async () => {
    const fast = memory('fast');
    const slow = memory('slow');
    const store = new TieredBlobStore(fast, slow);
    const data = Buffer.from('only in the cache');
    const key = await keyFor(data);
    await put(fast, key, data);
    const fastSpy = vi.spyOn(fast, 'findMissing');
    expect(await store.findMissing([key], ctx)).toEqual([key]);
    expect(fastSpy).not.toHaveBeenCalled();
  });

  it('a failing fast store never fails a call; a failing slow store does, named', async () => {
    const errors: RemexError[] = [];
    const fastDown = new RemexError(Code.UNAVAILABLE, 'disk unplugged');
    const slow = memory('slow');
    const store = new TieredBlobStore(failingStore('fast', new RemexError(Code.NOT_FOUND, 'x')), slow, {
      onFastError: (e) => errors.push(e),
    });
    const data = Buffer.from('still stored');
    const key = await keyFor(data);
    await put(store, key, data);
    expect(await slow.findMissing([key], ctx)).toEqual([]);
    expect(errors.map((e) => e.message)).toEqual(['fast: x']);

    const broken = new TieredBlobStore(failingStore('fast', fastDown), slow);
    await expect(broken.get(key, undefined, ctx)).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: 'fast: disk unplugged',
    });
    const noSlow = new TieredBlobStore(memory('fast'), failingStore('s3', fastDown));
    await expect(put(noSlow, key, data)).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: 's3: disk unplugged',
    });
    await expect(noSlow.get(key, undefined, ctx)).rejects.toMatchObject({ message: 's3: disk unplugged' });
  });

  it('gives up a fast copy that falls behind instead of holding back the reader', async () => {
    let fastReads = 0;
    // A fast store that reads one chunk and then stalls until its input is closed.
    const stalled: BlobStore = {
      name: 'stalled',
      get: async () => Promise.reject(new RemexError(Code.NOT_FOUND, 'not here')),
      put: (_key, data) =>
        new Promise<void>((_resolve, reject) => {
          data.once('data', () => {
            fastReads++;
            data.pause();
          });
          data.once('close', () => reject(new Error('input closed')));
        }),
      findMissing: async (keys) => [...keys],
    };
    const slow = await disk('slow');
    const errors: RemexError[] = [];
    const store = new TieredBlobStore(stalled, slow, {
      fastSlackBytes: 64 << 10,
      onFastError: (e) => errors.push(e),
    });
    const data = patterned(4 << 20);
    const key = await keyFor(data);
    await put(slow, key, data);
    expectBytes(await readAll(await store.get(key, undefined, ctx)), data);
    await store.settled();
    expect(fastReads).toBe(1);
    expect(errors).toEqual([]); // giving up is not the fast store's failure
  });

  it('leaves no partial blob in the fast store when the reader goes away', async () => {
    const fast = memory('fast');
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const data = patterned(5 << 20);
    const key = await keyFor(data);
    await put(slow, key, data);
    const stream = await store.get(key, undefined, ctx);
    for await (const _chunk of stream) break; // reads one chunk, then destroys the stream
    await store.settled();
    expect(await fast.findMissing([key], ctx)).toEqual([key]);
  });

  it('putFile renames into a disk slow store and copies into the fast store', async () => {
    const fast = memory('fast');
    const slow = await disk('slow');
    const store = new TieredBlobStore(fast, slow);
    const spool = await newDir();
    const data = patterned(200_000);
    const key = await keyFor(data);
    await writeFile(join(spool, 'upload'), data);
    await store.putFile(key, join(spool, 'upload'), ctx);
    expect(await readdir(spool)).toEqual([]);
    expectBytes(await readAll(await fast.get(key, undefined, ctx)), data);
    expectBytes(await readAll(await slow.get(key, undefined, ctx)), data);
  });
});

describe('ExistenceCachingBlobStore', () => {
  const setup = async (ttlMs = 1000, maxEntries = 100) => {
    let now = 1_000_000;
    const child = memory('child');
    const store = new ExistenceCachingBlobStore(child, ttlMs, maxEntries, { now: () => now });
    const spy = vi.spyOn(child, 'findMissing');
    const present = await keyFor(Buffer.from('present'));
    const absent = await keyFor(Buffer.from('absent'));
    await put(child, present, Buffer.from('present'));
    return { child, store, spy, present, absent, advance: (ms: number) => (now += ms) };
  };

  it('answers a repeated findMissing for a present key without asking the child', async () => {
    const { store, spy, present, absent } = await setup();
    expect(await store.findMissing([present, absent], ctx)).toEqual([absent]);
    expect(spy).toHaveBeenCalledTimes(1);
    expect(await store.findMissing([present], ctx)).toEqual([]);
    expect(spy).toHaveBeenCalledTimes(1);
    // Absence is never cached: only the absent key goes to the child again.
    expect(await store.findMissing([present, absent], ctx)).toEqual([absent]);
    expect(spy).toHaveBeenCalledTimes(2);
    expect(spy.mock.calls[1]![0]).toEqual([absent]);
  });

  it('asks the child again once ttlMs has passed since it last confirmed the key', async () => {
    const { store, spy, present, advance } = await setup(1000);
    await store.findMissing([present], ctx);
    advance(999);
    await store.findMissing([present], ctx);
    expect(spy).toHaveBeenCalledTimes(1);
    advance(1);
    expect(await store.findMissing([present], ctx)).toEqual([]);
    expect(spy).toHaveBeenCalledTimes(2);
  });

  it('remembers blobs it stored or served', async () => {
    const { store, spy, present } = await setup();
    const data = Buffer.from('written through the cache');
    const written = await keyFor(data);
    await put(store, written, data);
    await store.get(present, undefined, ctx);
    expect(await store.findMissing([written, present], ctx)).toEqual([]);
    expect(spy).not.toHaveBeenCalled();
  });

  it('keeps at most maxEntries keys, forgetting the oldest', async () => {
    const { store, spy } = await setup(60_000, 3);
    const keys: BlobKey[] = [];
    for (let i = 0; i < 5; i++) {
      const data = Buffer.from(`entry ${i}`);
      keys.push(await keyFor(data));
      await put(store, keys[i]!, data);
    }
    expect(store.size).toBe(3);
    expect(await store.findMissing(keys, ctx)).toEqual([]);
    expect(spy.mock.calls[0]![0]).toEqual(keys.slice(0, 2));
  });

  it('may report a blob the child lost as present, for at most ttlMs', async () => {
    let now = 0;
    const child = memory('child', 1000);
    const store = new ExistenceCachingBlobStore(child, 5000, 100, { now: () => now });
    const a = patterned(800, 1);
    const ka = await keyFor(a);
    await put(store, ka, a);
    const b = patterned(800, 2);
    await put(child, await keyFor(b), b); // evicts a from the child
    expect(await store.findMissing([ka], ctx)).toEqual([]); // the documented inexactness
    now += 5000;
    expect(await store.findMissing([ka], ctx)).toEqual([ka]);
  });
});

describe('MetricsBlobStore', () => {
  it('counts calls, bytes, digests and errors by status code, labelled with the node name', async () => {
    const store = new MetricsBlobStore(memory(), 'cas-metrics-test');
    const data = Buffer.from('counted bytes');
    const key = await keyFor(data);
    const absent = await keyFor(Buffer.from('absent'));
    await put(store, key, data);
    expect(await readAll(await store.get(key, { offset: 8 }, ctx))).toEqual(Buffer.from('bytes'));
    expect(await store.findMissing([key, absent], ctx)).toEqual([absent]);
    await expect(store.get(absent, undefined, ctx)).rejects.toMatchObject({ code: Code.NOT_FOUND });

    const text = await renderMetrics();
    const line = (s: string) => expect(text.split('\n')).toContain(s);
    line('remex_blobstore_requests_total{store="cas-metrics-test",op="put"} 1');
    line('remex_blobstore_requests_total{store="cas-metrics-test",op="get"} 2');
    line('remex_blobstore_requests_total{store="cas-metrics-test",op="find_missing"} 1');
    line('remex_blobstore_written_bytes_total{store="cas-metrics-test"} 13');
    line('remex_blobstore_read_bytes_total{store="cas-metrics-test"} 5');
    line('remex_blobstore_find_missing_keys_total{store="cas-metrics-test"} 2');
    line('remex_blobstore_find_missing_missing_total{store="cas-metrics-test"} 1');
    line('remex_blobstore_errors_total{store="cas-metrics-test",op="get",code="NOT_FOUND"} 1');
    line('remex_blobstore_request_duration_seconds_count{store="cas-metrics-test",op="put"} 1');
  });

  it('registers each metric once however many stores exist', async () => {
    const stores = Array.from({ length: 5 }, (_, i) => new MetricsBlobStore(memory(), `many-${i}`));
    const data = Buffer.from('x');
    const key = await keyFor(data);
    for (const s of stores) await put(s, key, data);
    const text = await renderMetrics();
    expect(text.match(/^# TYPE remex_blobstore_requests_total counter$/gm)).toHaveLength(1);
    for (let i = 0; i < 5; i++)
      expect(text).toContain(`remex_blobstore_requests_total{store="many-${i}",op="put"} 1`);
  });

  it('delegates putFile only when the child has it', async () => {
    expect(new MetricsBlobStore(memory(), 'no-putfile').putFile).toBeUndefined();
    const withFile = new MetricsBlobStore(await disk(), 'with-putfile');
    const spool = await newDir();
    const data = Buffer.from('from a file');
    const key = await keyFor(data);
    await writeFile(join(spool, 'f'), data);
    await withFile.putFile!(key, join(spool, 'f'), ctx);
    expect(await withFile.findMissing([key], ctx)).toEqual([]);
    expect(await renderMetrics()).toContain(
      'remex_blobstore_requests_total{store="with-putfile",op="put_file"} 1',
    );
  });
});

describe('MetricsKeyValueStore', () => {
  it('counts hits, misses, puts and bytes, labelled with the node name', async () => {
    const kv = new MetricsKeyValueStore(new MemoryKeyValueStore(1 << 20), 'ac-metrics-test');
    await kv.put('k', Buffer.from('value'), ctx);
    expect((await kv.get('k', ctx))?.toString()).toBe('value');
    expect(await kv.get('nope', ctx)).toBeUndefined();
    const text = (await renderMetrics()).split('\n');
    expect(text).toContain('remex_kv_requests_total{store="ac-metrics-test",op="put",result="ok"} 1');
    expect(text).toContain('remex_kv_requests_total{store="ac-metrics-test",op="get",result="hit"} 1');
    expect(text).toContain('remex_kv_requests_total{store="ac-metrics-test",op="get",result="miss"} 1');
    expect(text).toContain('remex_kv_bytes_total{store="ac-metrics-test",direction="written"} 5');
  });
});
