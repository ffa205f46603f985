import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../common/status.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { CasClient, packBatches } from './cas-client.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const digest = (b: Buffer) => ({ hash: sha256(b), sizeBytes: b.length });

let remex: RemexProcess;
let cas: CasClient;
let dir: string;

beforeAll(async () => {
  // A small batch limit so that a few hundred KiB already takes the ByteStream path.
  remex = await startRemex({ config: { instanceNames: ['main'], maxBatchTotalSizeBytes: '64KiB' } });
  cas = CasClient.connect(remex.address, { instanceName: 'main', concurrency: 4, chunkBytes: 16 << 10 });
  dir = await mkdtemp(join(tmpdir(), 'remex-cas-client-'));
});

afterAll(async () => {
  cas?.close();
  await rm(dir, { recursive: true, force: true });
  expect(await remex?.stop()).toBe(0);
});

describe('packBatches', () => {
  it('keeps every batch under the limit, counting framing per blob', () => {
    const items = [10, 20, 30, 900, 5].map((n, i) => ({ digest: { hash: String(i), sizeBytes: n }, i }));
    const batches = packBatches(items, 1000);
    expect(batches.map((b) => b.map((x) => x.i))).toEqual([[0, 1, 2], [3], [4]]);
  });
});

describe('CasClient against remex', () => {
  it('reads the batch limit from GetCapabilities', async () => {
    expect(await cas.batchLimit()).toBe(64 << 10);
  });

  it('uploads small and large blobs from memory and files, then finds none missing', async () => {
    const small = randomBytes(1000);
    const smallFile = randomBytes(3000);
    const large = randomBytes(200 << 10);
    const largeFile = randomBytes((1 << 20) + 17);
    await writeFile(join(dir, 'small'), smallFile);
    await writeFile(join(dir, 'large'), largeFile);
    const all = [small, smallFile, large, largeFile].map(digest);
    expect(await cas.findMissing(all)).toHaveLength(4);
    await cas.upload([
      { digest: digest(small), data: small },
      { digest: digest(smallFile), path: join(dir, 'small') },
      { digest: digest(large), data: large },
      { digest: digest(largeFile), path: join(dir, 'large') },
      { digest: digest(Buffer.alloc(0)), data: Buffer.alloc(0) },
    ]);
    expect(await cas.findMissing(all)).toEqual([]);

    // Download both ways into files, and into memory.
    const missing = await cas.downloadToFiles([
      { digest: digest(small), path: join(dir, 'd-small') },
      { digest: digest(largeFile), path: join(dir, 'd-large') },
      { digest: digest(Buffer.alloc(0)), path: join(dir, 'd-empty') },
    ]);
    expect(missing).toEqual([]);
    expect((await readFile(join(dir, 'd-small'))).equals(small)).toBe(true);
    expect((await readFile(join(dir, 'd-large'))).equals(largeFile)).toBe(true);
    expect((await stat(join(dir, 'd-empty'))).size).toBe(0);
    const { found } = await cas.readBlobs([digest(large), digest(smallFile)]);
    expect(found.get(`${sha256(large)}/${large.length}`)!.equals(large)).toBe(true);
    expect(found.get(`${sha256(smallFile)}/${smallFile.length}`)!.equals(smallFile)).toBe(true);
  });

  it('asks FindMissingBlobs in requests of at most 10,000 digests', async () => {
    const present = randomBytes(64);
    await cas.upload([{ digest: digest(present), data: present }]);
    const absent = Array.from({ length: 12_345 }, (_, i) =>
      digest(Buffer.from(`absent-${i}-${Math.random()}`)),
    );
    const missing = await cas.findMissing([...absent, digest(present)]);
    expect(missing).toHaveLength(absent.length);
    expect(new Set(missing.map((d) => d.hash)).has(sha256(present))).toBe(false);
  });

  it('reports blobs the CAS lacks instead of failing, small and large, and leaves no file', async () => {
    const small = digest(randomBytes(10));
    const large = digest(randomBytes(300 << 10));
    const missing = await cas.downloadToFiles([
      { digest: small, path: join(dir, 'm-small') },
      { digest: large, path: join(dir, 'm-large') },
    ]);
    expect(missing.map((d) => d.hash).sort()).toEqual([small.hash, large.hash].sort());
    await expect(stat(join(dir, 'm-large'))).rejects.toThrow();
    const err = await cas.readBlob(small, 'command').catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: `command: 1 blob missing from the CAS: ${small.hash}/10`,
    });
  });

  it('refuses an upload whose file does not match its digest', async () => {
    const data = randomBytes(100 << 10);
    await writeFile(join(dir, 'liar'), data);
    const claimed = { hash: sha256(randomBytes(8)), sizeBytes: data.length };
    const err = await cas.upload([{ digest: claimed, path: join(dir, 'liar') }]).catch((e: unknown) => e);
    expect(err).toMatchObject({ code: Code.INVALID_ARGUMENT });
  });

  it('uses the instance name: another instance is refused', async () => {
    const other = CasClient.connect(remex.address, { instanceName: 'nope' });
    try {
      const err = await other.findMissing([digest(Buffer.from('x'))]).catch((e: unknown) => e);
      expect(err).toMatchObject({ code: Code.INVALID_ARGUMENT });
      expect((err as Error).message).toContain('unknown instance name "nope"');
    } finally {
      other.close();
    }
  });
});
