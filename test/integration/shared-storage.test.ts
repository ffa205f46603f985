/**
 * The deployment storage through the real gRPC API of `remex serve` (issue 5): the CAS on
 * S3 (s3rver) behind a PostgreSQL index, the action cache in Redis, metrics over HTTP.
 *
 * - blobs written by BatchUpdateBlobs and by ByteStream (a 12 MiB one as a streamed
 *   multipart upload in 5 MiB parts) read back whole and from offsets (ranged reads);
 * - an object deleted in the bucket behind the index is reported missing by
 *   FindMissingBlobs, and the index entry is gone afterwards;
 * - the action cache answers UNAVAILABLE while Redis is down and works again, without a
 *   restart of remex, once Redis is back;
 * - GET /metrics shows every storage node's calls.
 */
import { status } from '@grpc/grpc-js';
import { DeleteObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Redis as IORedis } from 'ioredis';
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActionCacheService,
  BatchUpdateBlobsRequest,
  ContentAddressableStorageService,
  FindMissingBlobsRequest,
  GetActionResultRequest,
  UpdateActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { digestOf, errorOf, readBlob, writeBlob } from '../helpers/blobs.js';
import { clientsFor, unaryCall, type Clients, type DeepPartial } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';
import {
  freePort,
  startPostgres,
  startRedis,
  startS3,
  type Postgres,
  type Redis,
  type S3,
} from '../helpers/services.js';

const MiB = 1 << 20;
let pg: Postgres | undefined;
let redis: Redis | undefined;
let s3: S3 | undefined;
let remex: RemexProcess | undefined;
let c: Clients;
let metricsPort = 0;

beforeAll(async () => {
  [pg, redis, s3] = await Promise.all([startPostgres(), startRedis(), startS3()]);
  metricsPort = await freePort();
  remex = await startRemex({
    config: {
      services: ['cas', 'actioncache'],
      cas: {
        type: 'indexed',
        index: { type: 'postgres', url: pg.url },
        backend: {
          type: 's3',
          bucket: s3.bucket,
          prefix: 'cas/',
          endpoint: s3.endpoint,
          forcePathStyle: true,
          accessKeyId: s3.accessKeyId,
          secretAccessKey: s3.secretAccessKey,
          partSize: '5MiB',
        },
      },
      actionCache: { type: 'redis', url: redis.url, keyPrefix: 'ac:', ttl: '1h' },
      metrics: { listen: `127.0.0.1:${metricsPort}` },
    },
  });
  c = clientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  const code = await remex?.stop();
  await Promise.all([pg?.stop(), redis?.stop(), s3?.stop()]);
  expect(code).toBe(0);
});

const CAS = ContentAddressableStorageService;
const AC = ActionCacheService;
const findMissing = (req: DeepPartial<FindMissingBlobsRequest>) =>
  unaryCall(c.cas, CAS.findMissingBlobs, FindMissingBlobsRequest.fromPartial(req));
const batchUpdate = (req: DeepPartial<BatchUpdateBlobsRequest>) =>
  unaryCall(c.cas, CAS.batchUpdateBlobs, BatchUpdateBlobsRequest.fromPartial(req));
const resource = (d: { hash: string; sizeBytes: number }) => `blobs/${d.hash}/${d.sizeBytes}`;

describe('CAS on S3 behind a PostgreSQL index', () => {
  const small = [randomBytes(100), randomBytes(2000), randomBytes(30_000)];
  const large = randomBytes(12 * MiB);

  it('stores blobs through BatchUpdateBlobs and ByteStream and reads them back, also from offsets', async () => {
    const res = await batchUpdate({ requests: small.map((data) => ({ digest: digestOf(data), data })) });
    expect(res.responses.map((r) => r.status?.code ?? 0)).toEqual([0, 0, 0]);
    expect(await writeBlob(c, large, { chunk: MiB })).toBe(large.length);

    const all = [...small, large].map(digestOf);
    expect((await findMissing({ blobDigests: all })).missingBlobDigests).toEqual([]);
    expect((await readBlob(c, resource(digestOf(large)))).equals(large)).toBe(true);
    // Offsets across the 5 MiB part boundaries are ranged GETs.
    const at = 5 * MiB - 10;
    expect((await readBlob(c, resource(digestOf(large)), at, 20)).equals(large.subarray(at, at + 20))).toBe(
      true,
    );
    expect(
      (await readBlob(c, resource(digestOf(small[2]!)), 29_990)).equals(small[2]!.subarray(29_990)),
    ).toBe(true);
    // One index entry per blob.
    expect(await pg!.psql('SELECT count(*) FROM cas_index')).toBe('4\n');
  });

  it('an object deleted behind the index is reported missing by FindMissingBlobs', async () => {
    const gone = digestOf(small[1]!);
    const kept = digestOf(small[0]!);
    const client = new S3Client({
      endpoint: s3!.endpoint,
      region: 'us-east-1',
      forcePathStyle: true,
      credentials: { accessKeyId: s3!.accessKeyId, secretAccessKey: s3!.secretAccessKey },
    });
    await client.send(
      new DeleteObjectCommand({ Bucket: s3!.bucket, Key: `cas/sha256/${gone.hash}-${gone.sizeBytes}` }),
    );
    client.destroy();
    // Still indexed: only the backend lost it.
    expect(await pg!.psql(`SELECT count(*) FROM cas_index WHERE blob LIKE '%${gone.hash}%'`)).toBe('1\n');

    const res = await findMissing({ blobDigests: [kept, gone, digestOf(large)] });
    expect(res.missingBlobDigests).toEqual([gone]);
    // Repaired: the index no longer claims it.
    expect(await pg!.psql(`SELECT count(*) FROM cas_index WHERE blob LIKE '%${gone.hash}%'`)).toBe('0\n');
    const err = await errorOf(readBlob(c, resource(gone)));
    expect(err.code).toBe(status.NOT_FOUND);

    // Uploading it again makes it present again.
    await batchUpdate({ requests: [{ digest: gone, data: small[1]! }] });
    expect((await findMissing({ blobDigests: [gone] })).missingBlobDigests).toEqual([]);
  });
});

describe('action cache in Redis', () => {
  const actionDigest = digestOf('an action');
  const stdout = Buffer.from('hello\n');
  const getResult = () =>
    unaryCall(c.actionCache, AC.getActionResult, GetActionResultRequest.fromPartial({ actionDigest }));

  it('stores a result, answers UNAVAILABLE while Redis is down, and recovers by itself', async () => {
    await batchUpdate({ requests: [{ digest: digestOf(stdout), data: stdout }] });
    await unaryCall(
      c.actionCache,
      AC.updateActionResult,
      UpdateActionResultRequest.fromPartial({
        actionDigest,
        actionResult: { exitCode: 0, stdoutDigest: digestOf(stdout) },
      }),
    );
    expect((await getResult()).stdoutDigest).toEqual(digestOf(stdout));
    // Redis keeps the entry with the configured TTL.
    const r = new IORedis(redis!.url);
    const keys = await r.keys('ac:*');
    const ttl = await r.pttl(keys[0]!);
    r.disconnect();
    expect(keys).toHaveLength(1);
    expect(ttl).toBeGreaterThan(3_500_000);
    expect(ttl).toBeLessThanOrEqual(3_600_000);

    await redis!.kill();
    const down = await errorOf(getResult());
    expect(down.code, down.message).toBe(status.UNAVAILABLE);
    expect(down.details).toMatch(/redis .*unavailable/i);

    // Redis comes back empty (no persistence): the same remex process answers again.
    await redis!.restart();
    let answer: unknown;
    for (const deadline = Date.now() + 20_000; ;) {
      const e = await errorOf(getResult());
      if (e?.code === status.NOT_FOUND) {
        answer = e.code;
        break;
      }
      if (Date.now() > deadline) throw new Error(`still ${e?.code}: ${e?.details}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(answer).toBe(status.NOT_FOUND);
  });
});

describe('metrics', () => {
  it('GET /metrics reports the calls of every storage node', async () => {
    const res = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
    expect(res.status).toBe(200);
    const text = await res.text();
    /** The value of the sample of metric with (at least) these labels, in any order. */
    const sample = (metric: string, labels: Record<string, string>) =>
      text
        .split('\n')
        .filter((l) => l.startsWith(`${metric}{`))
        .filter((l) => Object.entries(labels).every(([k, v]) => l.includes(`${k}="${v}"`)))
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    expect(sample('remex_blobstore_requests_total', { store: 'cas', op: 'find_missing' })).toBeGreaterThan(0);
    expect(sample('remex_blobstore_requests_total', { store: 'cas.backend', op: 'put' })).toBeGreaterThan(0);
    expect(sample('remex_blobstore_written_bytes_total', { store: 'cas.backend' })).toBeGreaterThan(12 * MiB);
    expect(sample('remex_kv_requests_total', { store: 'action-cache', op: 'get' })).toBeGreaterThan(0);
    expect(sample('remex_kv_errors_total', { store: 'action-cache', code: 'UNAVAILABLE' })).toBeGreaterThan(
      0,
    );
  });
});
