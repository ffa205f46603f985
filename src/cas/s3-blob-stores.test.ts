import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { inspect } from 'node:util';
import pg from 'pg';
import { DeleteObjectCommand, ListObjectsV2Command, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { startPostgres, startS3, type Postgres, type S3 } from '../../test/helpers/services.js';
import { Code, RemexError } from '../common/status.js';
import { blobStoreContract, keyFor } from './blob-store.contract.js';
import { describeKey, type BlobKey, type BlobStore } from './blob-store.js';
import { IndexedBlobStore, type IndexedBlobStoreOptions } from './indexed-store.js';
import { PgBlobIndex } from './pg-blob-index.js';
import { S3BlobStore, type S3BlobStoreOptions } from './s3-blob-store.js';
import { readAll } from './stream-utils.js';

const ctx = {};
const MiB = 1 << 20;

let s3: S3 | undefined;
let postgres: Postgres | undefined;
let pool: pg.Pool;
let direct: S3Client;
const opened: BlobStore[] = [];

beforeAll(async () => {
  [s3, postgres] = await Promise.all([startS3(), startPostgres()]);
  pool = new pg.Pool({ connectionString: postgres.url, max: 8 });
  direct = new S3Client({
    endpoint: s3.endpoint,
    region: 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
  });
});

afterAll(async () => {
  await Promise.all(opened.map((s) => s.close?.()));
  direct?.destroy();
  await pool?.end();
  await Promise.all([s3?.stop(), postgres?.stop()]);
});

let seq = 0;
/** A fresh prefix / namespace, so every store starts empty. */
const scope = () => `t${seq++}-${randomBytes(4).toString('hex')}`;

function s3Store(options: Partial<S3BlobStoreOptions> = {}): S3BlobStore {
  const store = new S3BlobStore({
    endpoint: s3!.endpoint,
    region: 'us-east-1',
    bucket: s3!.bucket,
    forcePathStyle: true,
    accessKeyId: s3!.accessKeyId,
    secretAccessKey: s3!.secretAccessKey,
    prefix: `${scope()}/`,
    ...options,
  });
  opened.push(store);
  return store;
}

async function indexedStore(options: IndexedBlobStoreOptions = {}) {
  const backend = s3Store();
  const index = await PgBlobIndex.open({ pool, namespace: scope() });
  return { store: new IndexedBlobStore(backend, index, options), backend, index };
}

/** Deletes a blob's object straight from the bucket, behind the store and its index. */
async function deleteBehind(backend: S3BlobStore, key: BlobKey): Promise<void> {
  await direct.send(new DeleteObjectCommand({ Bucket: s3!.bucket, Key: backend.objectKey(key) }));
}

async function objectsUnder(prefix: string): Promise<number> {
  const out = await direct.send(new ListObjectsV2Command({ Bucket: s3!.bucket, Prefix: prefix }));
  return out.KeyCount ?? 0;
}

function patterned(size: number): Buffer {
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 131 + (i >> 12)) & 0xff;
  return data;
}

/** A stream of data in 256 KiB pieces, produced as it is read. */
function streamOf(data: Buffer, failAfter?: number): Readable {
  let pos = 0;
  return new Readable({
    read() {
      if (failAfter !== undefined && pos >= failAfter) {
        this.destroy(new Error('client went away'));
        return;
      }
      if (pos >= data.length) {
        this.push(null);
        return;
      }
      const end = Math.min(data.length, pos + (256 << 10));
      this.push(data.subarray(pos, end));
      pos = end;
    },
  });
}

blobStoreContract('s3', async () => s3Store());
blobStoreContract('indexed s3 + postgres', async () => (await indexedStore()).store);
blobStoreContract(
  'indexed s3 + postgres, confirmAfterMs 60 s',
  async () => (await indexedStore({ confirmAfterMs: 60_000 })).store,
);

describe('S3BlobStore', () => {
  it('streams a blob larger than partSize as a multipart upload and reads it back whole and by range', async () => {
    const store = s3Store({ partSize: 5 * MiB });
    const data = patterned(12 * MiB);
    const key = await keyFor(data);
    const done = vi.spyOn(Upload.prototype, 'done');
    try {
      await store.put(key, streamOf(data), ctx);
      expect(done).toHaveBeenCalledTimes(1);
    } finally {
      done.mockRestore();
    }
    expect((await readAll(await store.get(key, undefined, ctx))).equals(data)).toBe(true);
    const across = await readAll(await store.get(key, { offset: 5 * MiB - 10, limit: 20 }, ctx));
    expect(across.equals(data.subarray(5 * MiB - 10, 5 * MiB + 10))).toBe(true);
    const tail = await readAll(await store.get(key, { offset: 11 * MiB }, ctx));
    expect(tail.equals(data.subarray(11 * MiB))).toBe(true);
    expect(await store.findMissing([key], ctx)).toEqual([]);
  });

  it('leaves nothing behind when the stream fails midway through a multipart upload', async () => {
    const prefix = `${scope()}/`;
    const store = s3Store({ partSize: 5 * MiB, prefix });
    const data = patterned(12 * MiB);
    const key = await keyFor(data);
    // Over 5 MiB arrive first, so at least one part is uploaded before the failure.
    const err = await store.put(key, streamOf(data, 7 * MiB), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect((err as RemexError).message).toBe(`s3: put ${describeKey(key)}: client went away`);
    expect(await store.findMissing([key], ctx)).toEqual([key]);
    await expect(store.get(key, undefined, ctx)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    expect(await objectsUnder(prefix)).toBe(0);
  });

  it('rejects a multipart stream that ends short with INVALID_ARGUMENT and stores nothing', async () => {
    const prefix = `${scope()}/`;
    const store = s3Store({ partSize: 5 * MiB, prefix });
    const data = patterned(12 * MiB);
    const key = await keyFor(data);
    const err = await store.put(key, streamOf(data.subarray(0, 11 * MiB)), ctx).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: `s3: put ${describeKey(key)}: blob ${describeKey(key)} ended after ${11 * MiB} of ${12 * MiB} bytes`,
    });
    expect(await store.findMissing([key], ctx)).toEqual([key]);
    expect(await objectsUnder(prefix)).toBe(0);
  });

  it('answers NOT_FOUND naming the blob and the object', async () => {
    const store = s3Store({ prefix: 'cas/' });
    const key = await keyFor(Buffer.from('never stored'));
    const err = await store.get(key, { offset: 2 }, ctx).catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: Code.NOT_FOUND,
      message: `s3: blob ${describeKey(key)} not found (no object cas/sha256/${key.hash}-${key.sizeBytes} in bucket ${s3!.bucket})`,
    });
  });

  it('honours an aborted signal', async () => {
    const store = s3Store();
    const data = Buffer.from('cancelled');
    const key = await keyFor(data);
    const signal = AbortSignal.abort();
    await expect(store.put(key, Readable.from([data]), { signal })).rejects.toMatchObject({
      code: Code.CANCELLED,
    });
    await expect(store.findMissing([key], { signal })).rejects.toMatchObject({ code: Code.CANCELLED });
  });

  it('cancels a multipart upload when the signal aborts, leaving nothing', async () => {
    const prefix = `${scope()}/`;
    const store = s3Store({ partSize: 5 * MiB, prefix });
    const data = patterned(12 * MiB);
    const key = await keyFor(data);
    let sent = 0;
    const stalling = new Readable({
      read() {
        if (sent >= 6 * MiB) return; // the client stops sending
        this.push(data.subarray(sent, sent + MiB));
        sent += MiB;
      },
    });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 300);
    await expect(store.put(key, stalling, { signal: controller.signal })).rejects.toMatchObject({
      code: Code.CANCELLED,
    });
    expect(stalling.destroyed).toBe(true);
    expect(await store.findMissing([key], ctx)).toEqual([key]);
    expect(await objectsUnder(prefix)).toBe(0);
  });

  it('never puts credentials into errors', async () => {
    const accessKeyId = 'AKIAREMEXLEAKCHECK01';
    const secretAccessKey = 'remex-secret-must-not-leak';
    const store = s3Store({ accessKeyId, secretAccessKey });
    const data = Buffer.from('denied');
    const key = await keyFor(data);
    const err = await store.put(key, Readable.from([data]), ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect((err as RemexError).code).toBe(Code.PERMISSION_DENIED);
    const everything = inspect(err, { depth: 20, showHidden: true });
    expect(everything).not.toContain(accessKeyId);
    expect(everything).not.toContain(secretAccessKey);
  });
});

describe('IndexedBlobStore over S3 and PostgreSQL', () => {
  it('reports a blob deleted behind the index missing and removes its entry (confirmAfterMs 0)', async () => {
    const { store, backend, index } = await indexedStore();
    const gone = Buffer.from('deleted behind the index');
    const kept = Buffer.from('still there');
    const goneKey = await keyFor(gone);
    const keptKey = await keyFor(kept);
    await store.put(goneKey, Readable.from([gone]), ctx);
    await store.put(keptKey, Readable.from([kept]), ctx);
    expect(await store.findMissing([goneKey, keptKey], ctx)).toEqual([]);

    await deleteBehind(backend, goneKey);

    expect(await store.findMissing([goneKey, keptKey], ctx)).toEqual([goneKey]);
    const entries = await index.lookup([goneKey, keptKey], ctx);
    expect([...entries.keys()]).toEqual([`sha256/${keptKey.hash}-${keptKey.sizeBytes}`]);
  });

  it('with confirmAfterMs > 0, a get that hits the gone object repairs the index', async () => {
    const { store, backend, index } = await indexedStore({ confirmAfterMs: 3_600_000 });
    const data = Buffer.from('read after deletion');
    const key = await keyFor(data);
    await store.put(key, Readable.from([data]), ctx);
    await deleteBehind(backend, key);
    // The trade-off: within the window the index answers alone.
    expect(await store.findMissing([key], ctx)).toEqual([]);

    await expect(store.get(key, undefined, ctx)).rejects.toMatchObject({ code: Code.NOT_FOUND });

    expect((await index.lookup([key], ctx)).size).toBe(0);
    expect(await store.findMissing([key], ctx)).toEqual([key]);
  });

  it('with confirmAfterMs > 0, confirms against the backend once the window has passed', async () => {
    let now = 1_700_000_000_000;
    const { store, backend, index } = await indexedStore({ confirmAfterMs: 1000, clock: () => now });
    const data = Buffer.from('expires from the window');
    const key = await keyFor(data);
    await store.put(key, Readable.from([data]), ctx);
    await deleteBehind(backend, key);
    now += 999;
    expect(await store.findMissing([key], ctx)).toEqual([]);
    now += 1;
    expect(await store.findMissing([key], ctx)).toEqual([key]);
    expect((await index.lookup([key], ctx)).size).toBe(0);
  });

  it('refreshes confirmations of present blobs, so the next call within the window skips the backend', async () => {
    let now = 1_700_000_000_000;
    const { store, backend, index } = await indexedStore({ confirmAfterMs: 1000, clock: () => now });
    const data = Buffer.from('confirmed again');
    const key = await keyFor(data);
    await store.put(key, Readable.from([data]), ctx);
    now += 5000;
    const head = vi.spyOn(backend, 'findMissing');
    expect(await store.findMissing([key], ctx)).toEqual([]);
    expect(head).toHaveBeenCalledTimes(1);
    expect((await index.lookup([key], ctx)).get(`sha256/${key.hash}-${key.sizeBytes}`)).toBe(now);
    now += 500;
    expect(await store.findMissing([key], ctx)).toEqual([]);
    expect(head).toHaveBeenCalledTimes(1);
  });

  it('does not index a blob whose upload failed', async () => {
    const { store, index } = await indexedStore();
    const data = Buffer.from('short');
    const key = { ...(await keyFor(data)), sizeBytes: 50 };
    await expect(store.put(key, Readable.from([data]), ctx)).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
    });
    expect((await index.lookup([key], ctx)).size).toBe(0);
  });

  it('answers findMissing over many keys with one index query and at most one batched backend call', async () => {
    const present: BlobKey[] = [];
    const absent: BlobKey[] = [];
    for (let i = 0; i < 150; i++) {
      const key = await keyFor(Buffer.from(`many ${i}`));
      (i < 100 ? present : absent).push(key);
    }
    for (const confirmAfterMs of [0, 60_000]) {
      const { store, backend, index } = await indexedStore({ confirmAfterMs });
      await Promise.all(
        present.map((key, i) => store.put(key, Readable.from([Buffer.from(`many ${i}`)]), ctx)),
      );
      const lookup = vi.spyOn(index, 'lookup');
      const queries = vi.spyOn(pool, 'query');
      const backendFind = vi.spyOn(backend, 'findMissing');
      try {
        const missing = await store.findMissing([...present, ...absent], ctx);
        expect(missing).toEqual(absent);
        expect(lookup).toHaveBeenCalledTimes(1);
        expect(queries).toHaveBeenCalledTimes(1);
        if (confirmAfterMs === 0) {
          // Every indexed key is confirmed, in one call; absent keys never reach the backend.
          expect(backendFind).toHaveBeenCalledTimes(1);
          expect(backendFind.mock.calls[0]![0]).toHaveLength(present.length);
        } else {
          expect(backendFind).not.toHaveBeenCalled();
        }
      } finally {
        lookup.mockRestore();
        queries.mockRestore();
        backendFind.mockRestore();
      }
    }
  });
});
