import { status } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { zstdCompressBuffer } from '../../src/cas/compression.js';
import { ByteStreamService } from '../../src/gen/google/bytestream/bytestream.js';
import {
  CapabilitiesService,
  ContentAddressableStorageService,
  BatchReadBlobsRequest,
  BatchUpdateBlobsRequest,
  Directory,
  FindMissingBlobsRequest,
  GetTreeRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { digestOf, errorOf, readBlob, sha256, writeBlob } from '../helpers/blobs.js';
import { clientsFor, unaryCall, type Clients, type DeepPartial } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

let remex: RemexProcess;
let c: Clients;

beforeAll(async () => {
  remex = await startRemex({
    config: { instanceNames: ['', 'main', 'team/a'], maxBatchTotalSizeBytes: '1MiB' },
  });
  c = clientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
});

const CAS = ContentAddressableStorageService;
const findMissing = (req: DeepPartial<FindMissingBlobsRequest>) =>
  unaryCall(c.cas, CAS.findMissingBlobs, FindMissingBlobsRequest.fromPartial(req));
const batchUpdate = (req: DeepPartial<BatchUpdateBlobsRequest>) =>
  unaryCall(c.cas, CAS.batchUpdateBlobs, BatchUpdateBlobsRequest.fromPartial(req));
const batchRead = (req: DeepPartial<BatchReadBlobsRequest>) =>
  unaryCall(c.cas, CAS.batchReadBlobs, BatchReadBlobsRequest.fromPartial(req));
const getCapabilities = (instanceName: string) =>
  unaryCall(c.capabilities, CapabilitiesService.getCapabilities, { instanceName });
const queryWriteStatus = (resourceName: string) =>
  unaryCall(c.byteStream, ByteStreamService.queryWriteStatus, { resourceName });

describe('Capabilities', () => {
  it('advertises what is implemented', async () => {
    const caps = await getCapabilities('main');
    expect(caps.cacheCapabilities).toBeDefined();
    const cache = caps.cacheCapabilities!;
    expect(cache.digestFunctions).toEqual([1, 2, 3, 5, 6, 9]); // SHA256 SHA1 MD5 SHA384 SHA512 BLAKE3
    expect(cache.maxBatchTotalSizeBytes).toBe(1 << 20);
    expect(cache.actionCacheUpdateCapabilities?.updateEnabled).toBe(true);
    expect(cache.supportedCompressors).toEqual([1]);
    expect(cache.supportedBatchUpdateCompressors).toEqual([1]);
    expect(caps.executionCapabilities).toMatchObject({
      execEnabled: true,
      digestFunction: 1,
      digestFunctions: [1],
      executionPriorityCapabilities: { priorities: [{ minPriority: -1000, maxPriority: 1000 }] },
    });
    expect(caps.lowApiVersion).toMatchObject({ major: 2, minor: 0 });
    expect(caps.highApiVersion).toMatchObject({ major: 2, minor: 3 });
  });

  it('rejects an unknown instance, naming it', async () => {
    const err = await errorOf(getCapabilities('nope'));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/unknown instance name "nope"/);
  });
});

describe('ContentAddressableStorage', () => {
  it('answers FindMissingBlobs exactly for 10,000 digests in one call', async () => {
    const blobs = Array.from({ length: 10_000 }, (_, i) => Buffer.from(`fmb-${randomUUID()}-${i}`));
    const present = blobs.filter((_, i) => i % 2 === 0);
    for (let i = 0; i < present.length; i += 1000) {
      const res = await batchUpdate({
        requests: present.slice(i, i + 1000).map((b) => ({ digest: digestOf(b), data: b })),
      });
      expect(res.responses.every((r) => r.status?.code === 0)).toBe(true);
    }
    const res = await findMissing({ blobDigests: blobs.map(digestOf) });
    const expected = blobs.filter((_, i) => i % 2 === 1).map((b) => sha256(b));
    expect(res.missingBlobDigests.map((d) => d.hash).sort()).toEqual(expected.sort());
  });

  it('treats the empty blob as always present', async () => {
    const res = await findMissing({ blobDigests: [digestOf('')] });
    expect(res.missingBlobDigests).toEqual([]);
  });

  it('accepts empty batches (BuildStream probes with them)', async () => {
    expect((await batchUpdate({ requests: [] })).responses).toEqual([]);
    expect((await batchRead({ digests: [] })).responses).toEqual([]);
  });

  it('verifies each blob of BatchUpdateBlobs and stores only the good ones', async () => {
    const good = Buffer.from('good blob');
    const bad = Buffer.from('bad blob');
    const wrong = { hash: sha256('something else'), sizeBytes: bad.length };
    const res = await batchUpdate({
      requests: [
        { digest: digestOf(good), data: good },
        { digest: wrong, data: bad },
      ],
    });
    expect(res.responses[0]!.status?.code).toBe(0);
    expect(res.responses[1]!.status?.code).toBe(status.INVALID_ARGUMENT);
    expect(res.responses[1]!.status?.message).toMatch(/does not match digest/);
    const missing = await findMissing({ blobDigests: [digestOf(good), wrong] });
    expect(missing.missingBlobDigests).toEqual([wrong]);
  });

  it('accepts zstd-compressed blobs in BatchUpdateBlobs and serves zstd when asked', async () => {
    const data = Buffer.from('compress me '.repeat(5000));
    const res = await batchUpdate({
      requests: [{ digest: digestOf(data), data: await zstdCompressBuffer(data), compressor: 1 }],
    });
    expect(res.responses[0]!.status?.code).toBe(0);
    const read = await batchRead({ digests: [digestOf(data)], acceptableCompressors: [1] });
    expect(read.responses[0]!.compressor).toBe(1);
    expect(read.responses[0]!.data.length).toBeLessThan(data.length);
    const plain = await batchRead({ digests: [digestOf(data)] });
    expect(plain.responses[0]!.data.equals(data)).toBe(true);
  });

  it('reads blobs in batches with a status per blob', async () => {
    const data = Buffer.from('readable');
    await batchUpdate({ requests: [{ digest: digestOf(data), data }] });
    const absent = digestOf('absent blob');
    const res = await batchRead({ digests: [digestOf(data), absent] });
    expect(res.responses[0]).toMatchObject({ status: { code: 0 } });
    expect(res.responses[0]!.data.equals(data)).toBe(true);
    expect(res.responses[1]!.status?.code).toBe(status.NOT_FOUND);
  });

  it.each([
    [
      'a malformed hash',
      { blobDigests: [{ hash: 'xyz', sizeBytes: 1 }], digestFunction: 1 },
      /invalid hash "xyz"/,
    ],
    ['a negative size', { blobDigests: [{ hash: sha256('a'), sizeBytes: -5 }] }, /invalid size -5/],
    [
      'an unknown digest function',
      { blobDigests: [], digestFunction: 42 as never },
      /unsupported digest function 42/,
    ],
    [
      'an uninferable hash length',
      { blobDigests: [{ hash: 'ab', sizeBytes: 1 }] },
      /cannot infer the digest function/,
    ],
    ['an unknown instance', { instanceName: 'x/y', blobDigests: [] }, /unknown instance name "x\/y"/],
  ])('rejects %s with INVALID_ARGUMENT', async (_what, req, message) => {
    const err = await errorOf(findMissing(req));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(message);
  });

  it('rejects batches over max_batch_total_size_bytes', async () => {
    const big = Buffer.alloc(600_000, 1);
    const big2 = Buffer.alloc(600_000, 2);
    const err = await errorOf(
      batchUpdate({
        requests: [
          { digest: digestOf(big), data: big },
          { digest: digestOf(big2), data: big2 },
        ],
      }),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/over max_batch_total_size_bytes 1048576/);
    const readErr = await errorOf(batchRead({ digests: [digestOf(big), digestOf(big2)] }));
    expect(readErr.code).toBe(status.INVALID_ARGUMENT);
  });

  it('keeps digest functions apart (BLAKE3 and SHA256 of the same bytes)', async () => {
    const data = Buffer.from('blake3 content');
    const { createBLAKE3 } = await import('hash-wasm');
    const h = await createBLAKE3();
    h.update(data);
    const b3 = { hash: h.digest('hex'), sizeBytes: data.length };
    const res = await batchUpdate({ requests: [{ digest: b3, data }], digestFunction: 9 });
    expect(res.responses[0]!.status?.code).toBe(0);
    expect((await findMissing({ blobDigests: [b3], digestFunction: 9 })).missingBlobDigests).toEqual([]);
    expect(await readBlob(c, `blobs/blake3/${b3.hash}/${b3.sizeBytes}`)).toEqual(data);
  });

  it('serves GetTree in pages, each directory once', async () => {
    // root → a, b; a → leaf; b → leaf (shared)
    const enc = (d: DeepPartial<Directory>) =>
      Buffer.from(Directory.encode(Directory.fromPartial(d)).finish());
    const leaf = enc({ files: [{ name: 'f', digest: digestOf('x'), isExecutable: false }] });
    const a = enc({ directories: [{ name: 'leaf', digest: digestOf(leaf) }] });
    const b = enc({ directories: [{ name: 'leaf2', digest: digestOf(leaf) }], files: [] });
    const root = enc({
      directories: [
        { name: 'a', digest: digestOf(a) },
        { name: 'b', digest: digestOf(b) },
      ],
    });
    await batchUpdate({ requests: [leaf, a, b, root].map((d) => ({ digest: digestOf(d), data: d })) });
    const pages: { directories: Directory[]; nextPageToken: string }[] = await new Promise(
      (resolve, reject) => {
        const out: { directories: Directory[]; nextPageToken: string }[] = [];
        const s = c.cas.getTree(GetTreeRequest.fromPartial({ rootDigest: digestOf(root), pageSize: 2 }));
        s.on('data', (r) => out.push(r));
        s.on('end', () => resolve(out));
        s.on('error', reject);
      },
    );
    expect(pages.map((p) => p.directories.length)).toEqual([2, 2]);
    expect(pages.flatMap((p) => p.directories)).toHaveLength(4);
    expect(pages.at(-1)!.nextPageToken).toBe('');
    // Resuming from a page token gives the rest.
    const rest: Directory[] = await new Promise((resolve, reject) => {
      const out: Directory[] = [];
      const s = c.cas.getTree(
        GetTreeRequest.fromPartial({
          rootDigest: digestOf(root),
          pageSize: 10,
          pageToken: pages[0]!.nextPageToken,
        }),
      );
      s.on('data', (r) => out.push(...r.directories));
      s.on('end', () => resolve(out));
      s.on('error', reject);
    });
    expect(rest).toHaveLength(2);
  });
});

describe('ByteStream', () => {
  it('writes in chunks and reads back whole, by offset and by limit', async () => {
    const data = Buffer.alloc(3 * 1024 * 1024 + 17);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    const d = digestOf(data);
    expect(await writeBlob(c, data, { instance: 'team/a' })).toBe(data.length);
    const name = `team/a/blobs/${d.hash}/${d.sizeBytes}`;
    expect((await readBlob(c, name)).equals(data)).toBe(true);
    expect((await readBlob(c, name, 1000, 10)).equals(data.subarray(1000, 1010))).toBe(true);
    expect(
      (await readBlob(c, `team/a/blobs/sha256/${d.hash}/${d.sizeBytes}`, data.length - 5)).equals(
        data.subarray(-5),
      ),
    ).toBe(true);
  });

  it('rejects a wrong hash with INVALID_ARGUMENT and stores nothing', async () => {
    const data = Buffer.alloc(200_000, 3);
    const claimed = digestOf('not this content');
    const err = await errorOf(
      writeBlob(c, data, { resourceName: `uploads/${randomUUID()}/blobs/${claimed.hash}/${data.length}` }),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/does not match digest/);
    const missing = await findMissing({ blobDigests: [{ hash: claimed.hash, sizeBytes: data.length }] });
    expect(missing.missingBlobDigests).toHaveLength(1);
  });

  it('rejects a size mismatch with INVALID_ARGUMENT', async () => {
    const data = Buffer.alloc(100_000, 4);
    const d = digestOf(data);
    const err = await errorOf(
      writeBlob(c, data, { resourceName: `uploads/${randomUUID()}/blobs/${d.hash}/50000` }),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/more than 50000 bytes/);
  });

  it('resumes an interrupted upload from committed_size', async () => {
    const data = Buffer.alloc(2 * 1024 * 1024, 9);
    data.write('unique ' + randomUUID());
    const d = digestOf(data);
    const name = `uploads/${randomUUID()}/blobs/${d.hash}/${d.sizeBytes}`;
    // First stream: send half, then drop the stream (cancel) without finish_write.
    await new Promise<void>((resolve) => {
      const s = c.byteStream.write(() => resolve());
      s.write({ resourceName: name, writeOffset: 0, finishWrite: false, data: data.subarray(0, 1 << 20) });
      setTimeout(() => s.cancel(), 300);
    });
    let committed = 0;
    for (let i = 0; i < 50 && committed === 0; i++) {
      const st = await queryWriteStatus(name);
      committed = st.committedSize;
      expect(st.complete).toBe(false);
      if (committed === 0) await new Promise((r) => setTimeout(r, 50));
    }
    expect(committed).toBe(1 << 20);
    // Second stream: resume from committed_size.
    const done = await new Promise<number>((resolve, reject) => {
      const s = c.byteStream.write((err, res) => (err ? reject(err) : resolve(res!.committedSize)));
      s.write({
        resourceName: name,
        writeOffset: committed,
        finishWrite: true,
        data: data.subarray(committed),
      });
      s.end();
    });
    expect(done).toBe(data.length);
    expect((await readBlob(c, `blobs/${d.hash}/${d.sizeBytes}`)).equals(data)).toBe(true);
    const st = await queryWriteStatus(name);
    expect(st).toMatchObject({ committedSize: data.length, complete: true });
  });

  it('finishes a write early when the blob is already present', async () => {
    const data = Buffer.alloc(500_000, 5);
    await writeBlob(c, data);
    const d = digestOf(data);
    const committed = await new Promise<number>((resolve, reject) => {
      const s = c.byteStream.write((err, res) => (err ? reject(err) : resolve(res!.committedSize)));
      // Only the first chunk is sent; the server answers without waiting for the rest.
      s.write({
        resourceName: `uploads/${randomUUID()}/blobs/${d.hash}/${d.sizeBytes}`,
        writeOffset: 0,
        finishWrite: false,
        data: data.subarray(0, 1000),
      });
    });
    expect(committed).toBe(data.length);
  });

  it('writes and reads zstd-compressed blobs', async () => {
    const data = Buffer.from(`zstd bytestream ${randomUUID()} `.repeat(20_000));
    const d = digestOf(data);
    const packed = await zstdCompressBuffer(data);
    const committed = await writeBlob(c, packed, {
      resourceName: `main/uploads/${randomUUID()}/compressed-blobs/zstd/${d.hash}/${d.sizeBytes}`,
      chunk: 1000,
    });
    expect(committed).toBe(-1);
    expect((await readBlob(c, `main/blobs/${d.hash}/${d.sizeBytes}`)).equals(data)).toBe(true);
    const compressed = await readBlob(c, `main/compressed-blobs/zstd/${d.hash}/${d.sizeBytes}`);
    expect(compressed.length).toBeLessThan(data.length);
    const { zstdDecompressBuffer } = await import('../../src/cas/compression.js');
    expect((await zstdDecompressBuffer(compressed, data.length)).equals(data)).toBe(true);
  });

  it.each([
    ['a name without blobs', 'nothing/here', status.INVALID_ARGUMENT, /invalid resource name/],
    [
      'an unknown instance',
      `ghost/blobs/${sha256('a')}/1`,
      status.INVALID_ARGUMENT,
      /unknown instance name "ghost"/,
    ],
    [
      'a hostile instance path',
      `../../etc/blobs/${sha256('a')}/1`,
      status.INVALID_ARGUMENT,
      /unknown instance name/,
    ],
    ['an absent blob', `blobs/${sha256('never written')}/13`, status.NOT_FOUND, /not found/],
  ])('answers Read of %s with a clear status', async (_what, name, code, message) => {
    const err = await errorOf(readBlob(c, name));
    expect(err.code).toBe(code);
    expect(err.details).toMatch(message);
  });

  it('rejects offsets past the end with OUT_OF_RANGE', async () => {
    const data = Buffer.from('short');
    await writeBlob(c, data);
    const d = digestOf(data);
    const err = await errorOf(readBlob(c, `blobs/${d.hash}/${d.sizeBytes}`, 99));
    expect(err.code).toBe(status.OUT_OF_RANGE);
  });

  it('answers QueryWriteStatus for an unknown upload with NOT_FOUND', async () => {
    const d = digestOf('never uploaded ' + randomUUID());
    const err = await errorOf(queryWriteStatus(`uploads/${randomUUID()}/blobs/${d.hash}/${d.sizeBytes}`));
    expect(err.code).toBe(status.NOT_FOUND);
  });
});
