import { Server, ServerCredentials, credentials, status, type ServiceError } from '@grpc/grpc-js';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { Instances } from '../common/instances.js';
import { Code, RemexError } from '../common/status.js';
import { ByteStreamClient, ByteStreamService } from '../gen/google/bytestream/bytestream.js';
import type { BlobKey, BlobStore, ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { keyFor } from './blob-store.contract.js';
import { byteStreamService } from './bytestream-service.js';
import { Cas } from './cas.js';
import { DiskBlobStore } from './disk-blob-store.js';
import { MemoryBlobStore } from './memory-blob-store.js';
import { UploadManager } from './upload-manager.js';

// ByteStream Read over a real grpc-js server in this process, so the store under it can
// be watched (which streams it handed out, whether they were released) or made to fail.

const ctx = {};

/** Wraps a store, keeping every stream get() returns; `stream` replaces the inner one. */
class WatchedStore implements BlobStore {
  readonly name = 'watched';
  readonly streams: Readable[] = [];

  constructor(
    readonly inner: BlobStore,
    private readonly stream?: (inner: Readable) => Readable,
  ) {}

  async get(key: BlobKey, range: ReadRange | undefined, c: StoreContext): Promise<Readable> {
    const inner = await this.inner.get(key, range, c);
    const s = this.stream ? this.stream(inner) : inner;
    this.streams.push(s);
    return s;
  }
  put(key: BlobKey, data: Readable, c: StoreContext): Promise<void> {
    return this.inner.put(key, data, c);
  }
  findMissing(keys: readonly BlobKey[], c: StoreContext): Promise<BlobKey[]> {
    return this.inner.findMissing(keys, c);
  }
}

/** A stream that delivers the first `bytes` of the blob and then fails like a lost backend. */
function failingAfter(bytes: number): (inner: Readable) => Readable {
  return (inner) => {
    inner.destroy();
    return new Readable({
      read() {
        this.push(randomBytes(bytes));
        this.destroy(new RemexError(Code.UNAVAILABLE, 'test store: connection lost mid-blob'));
      },
    });
  };
}

/** A stream that delivers the first `bytes` of the blob and then never another (a stalled backend). */
function stallingAfter(bytes: number): (inner: Readable) => Readable {
  return (inner) => {
    inner.destroy();
    let sent = false;
    return new Readable({
      read() {
        if (!sent) this.push(randomBytes(bytes));
        sent = true;
      },
    });
  };
}

interface Harness {
  client: ByteStreamClient;
  cas: Cas;
}

const servers: Server[] = [];
const clients: ByteStreamClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.tryShutdown(r))));
});

async function serve(store: BlobStore): Promise<Harness> {
  const cas = new Cas(store, { maxBatchTotalSizeBytes: 4 << 20 });
  const uploads = await UploadManager.create(cas, {
    spoolDir: await mkdtemp(join(tmpdir(), 'remex-bs-spool-')),
    idleTimeoutMs: 60_000,
  });
  const server = new Server();
  server.addService(ByteStreamService, byteStreamService(cas, uploads, new Instances([''])));
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  servers.push(server);
  const client = new ByteStreamClient(`127.0.0.1:${port}`, credentials.createInsecure());
  clients.push(client);
  return { client, cas };
}

const resourceOf = (key: BlobKey, compressed: boolean) =>
  `${compressed ? 'compressed-blobs/zstd' : 'blobs'}/${key.hash}/${key.sizeBytes}`;

/** Reads to the end of the call; rejects with its status. A deadline turns a hang into a failure. */
function read(client: ByteStreamClient, resourceName: string, readLimit = 0): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    const call = client.read({ resourceName, readOffset: 0, readLimit }, { deadline: Date.now() + 10_000 });
    call.on('data', (r: { data: Buffer }) => parts.push(r.data));
    call.on('error', reject);
    call.on('end', () => resolve(Buffer.concat(parts)));
  });
}

/** Whether the stream closes before `ms` pass (bounds a wait that the bug turns into a hang). */
async function closesWithin(stream: Readable, ms: number): Promise<boolean> {
  if (stream.closed) return true;
  const timer = new Promise<false>((r) => setTimeout(() => r(false), ms).unref());
  // Not events.once: that rejects on 'error', and a destroyed stream may well emit one.
  return Promise.race([new Promise<true>((r) => stream.once('close', () => r(true))), timer]);
}

async function storedBlob(store: BlobStore, size: number): Promise<BlobKey> {
  const data = randomBytes(size); // incompressible: the zstd stream is as long as the blob
  const key = await keyFor(data);
  await store.put(key, Readable.from([data]), ctx);
  return key;
}

describe('ByteStream Read releases the store stream', () => {
  it('when a compressed read stops at read_limit', async () => {
    const store = new WatchedStore(new MemoryBlobStore(64 << 20));
    const { client } = await serve(store);
    const key = await storedBlob(store, 4 << 20);
    expect((await read(client, resourceOf(key, true), 1000)).length).toBe(1000);
    expect(store.streams).toHaveLength(1);
    expect(store.streams[0]!.destroyed).toBe(true);
  });

  it('so the disk store may evict the blob after a compressed read stopped at read_limit', async () => {
    const disk = await DiskBlobStore.open({
      path: await mkdtemp(join(tmpdir(), 'remex-bs-disk-')),
      maxBytes: 6 << 20,
    });
    const store = new WatchedStore(disk);
    const { client } = await serve(store);
    const first = await storedBlob(store, 4 << 20);
    expect((await read(client, resourceOf(first, true), 1000)).length).toBe(1000);
    expect(await closesWithin(store.streams[0]!, 5000)).toBe(true);
    // The budget holds one of the two: the first, no longer read, makes way for the second.
    const second = await storedBlob(store, 4 << 20);
    expect(await disk.findMissing([first, second], ctx)).toEqual([first]);
  });

  it.each([
    ['compressed', true],
    ['plain', false],
  ])('when the client cancels a %s read while the store is stalled', async (_what, compressed) => {
    const store = new WatchedStore(new MemoryBlobStore(64 << 20), stallingAfter(1 << 20));
    const { client } = await serve(store);
    const key = await storedBlob(store, 4 << 20);
    const call = client.read({ resourceName: resourceOf(key, compressed), readOffset: 0, readLimit: 0 });
    call.on('error', () => undefined); // CANCELLED, by us
    await once(call, 'data');
    call.cancel();
    expect(await closesWithin(store.streams[0]!, 5000)).toBe(true);
  });
});

describe('ByteStream Read of a store stream that fails mid-blob', () => {
  it.each([
    ['compressed', true],
    ['plain', false],
  ])('ends a %s read with the store error', async (_what, compressed) => {
    const store = new WatchedStore(new MemoryBlobStore(64 << 20), failingAfter(256 << 10));
    const { client } = await serve(store);
    const key = await storedBlob(store, 4 << 20);
    const err = (await read(client, resourceOf(key, compressed)).catch((e: unknown) => e)) as ServiceError;
    expect(err.code).toBe(status.UNAVAILABLE);
    expect(err.details).toBe('test store: connection lost mid-blob');
  });
});
