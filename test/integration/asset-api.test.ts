/**
 * Remote Asset API (Fetch and Push) against a real `remex serve`: the probes BuildStream makes,
 * blob and directory associations keyed by URI and qualifiers, completeness of pushed trees,
 * expiry and oldest_content_accepted, and that a fetch never answers with content gone from the CAS.
 */
import { status } from '@grpc/grpc-js';
import { createHash, randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FetchBlobRequest,
  FetchDirectoryRequest,
  FetchService,
  PushBlobRequest,
  PushDirectoryRequest,
  PushService,
} from '../../src/gen/build/bazel/remote/asset/v1/remote_asset.js';
import {
  BatchUpdateBlobsRequest,
  ContentAddressableStorageService,
  Directory,
  FindMissingBlobsRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { digestOf, errorOf } from '../helpers/blobs.js';
import { clientsFor, unaryCall, type Clients, type DeepPartial } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

let remex: RemexProcess;
let c: Clients;

beforeAll(async () => {
  remex = await startRemex({ config: { instanceNames: ['', 'x'] } });
  c = clientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
});

const CAS = ContentAddressableStorageService;

const fetchBlob = (req: DeepPartial<FetchBlobRequest>, clients: Clients = c) =>
  unaryCall(clients.fetch, FetchService.fetchBlob, FetchBlobRequest.fromPartial(req));
const fetchDirectory = (req: DeepPartial<FetchDirectoryRequest>, clients: Clients = c) =>
  unaryCall(clients.fetch, FetchService.fetchDirectory, FetchDirectoryRequest.fromPartial(req));
const pushBlob = (req: DeepPartial<PushBlobRequest>, clients: Clients = c) =>
  unaryCall(clients.push, PushService.pushBlob, PushBlobRequest.fromPartial(req));
const pushDirectory = (req: DeepPartial<PushDirectoryRequest>, clients: Clients = c) =>
  unaryCall(clients.push, PushService.pushDirectory, PushDirectoryRequest.fromPartial(req));

async function upload(clients: Clients, ...blobs: Buffer[]): Promise<void> {
  const res = await unaryCall(
    clients.cas,
    CAS.batchUpdateBlobs,
    BatchUpdateBlobsRequest.fromPartial({ requests: blobs.map((b) => ({ digest: digestOf(b), data: b })) }),
  );
  expect(res.responses.map((r) => r.status?.code)).toEqual(blobs.map(() => 0));
}

const unique = (label: string) => Buffer.from(`${label} ${randomUUID()}`);
const uri = (label: string) => `https://example.com/${label}/${randomUUID()}.tar.gz`;
const encodeDirectory = (d: DeepPartial<Directory>) =>
  Buffer.from(Directory.encode(Directory.fromPartial(d)).finish());
/** A Timestamp `offsetMs` from now, at millisecond precision. */
const timestamp = (offsetMs: number) => {
  const ms = Date.now() + offsetMs;
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
};

/** A tree root/ → (a.txt, sub/ → b.txt); `blobs` are all of its blobs, root directory first. */
function directoryTree() {
  const a = unique('file a');
  const b = unique('file b');
  const sub = encodeDirectory({ files: [{ name: 'b.txt', digest: digestOf(b) }] });
  const root = encodeDirectory({
    files: [{ name: 'a.txt', digest: digestOf(a) }],
    directories: [{ name: 'sub', digest: digestOf(sub) }],
  });
  return { root, sub, a, b, blobs: { root, sub, a, b } };
}

describe('requests without URIs (BuildStream probes the services with these)', () => {
  it.each([
    ['FetchBlob', () => fetchBlob({})],
    ['FetchDirectory', () => fetchDirectory({})],
    ['PushBlob', () => pushBlob({})],
    ['PushDirectory', () => pushDirectory({})],
    ['PushBlob with a digest', () => pushBlob({ blobDigest: digestOf('anything') })],
  ])('%s answers INVALID_ARGUMENT', async (_what, request) => {
    const err = await errorOf(request());
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/at least one URI is required/);
  });
});

describe('blob associations', () => {
  it('serves a pushed blob by the same URI and qualifiers', async () => {
    const blob = unique('asset blob');
    await upload(c, blob);
    const u = uri('blob');
    const qualifiers = [
      { name: 'resource_type', value: 'application/x-tar' },
      { name: 'checksum.sri', value: 'sha256-abc' },
    ];
    await pushBlob({ uris: [u], qualifiers, blobDigest: digestOf(blob) });

    const res = await fetchBlob({ uris: [u], qualifiers: [...qualifiers].reverse() });
    expect(res).toMatchObject({ status: { code: 0 }, uri: u, blobDigest: digestOf(blob), digestFunction: 1 });
    expect(res.expiresAt).toBeUndefined();
    expect(res.qualifiers).toEqual(expect.arrayContaining(qualifiers));
  });

  it.each([
    ['a different qualifier value', [{ name: 'resource_type', value: 'application/zip' }]],
    ['no qualifiers', []],
    [
      'an extra qualifier',
      [
        { name: 'resource_type', value: 'application/x-tar' },
        { name: 'vcs.commit', value: 'deadbeef' },
      ],
    ],
  ])('answers NOT_FOUND for the same URI with %s', async (_what, qualifiers) => {
    const blob = unique('qualified blob');
    await upload(c, blob);
    const u = uri('qualified');
    await pushBlob({
      uris: [u],
      qualifiers: [{ name: 'resource_type', value: 'application/x-tar' }],
      blobDigest: digestOf(blob),
    });
    const err = await errorOf(fetchBlob({ uris: [u], qualifiers }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no blob is known for URI ${u}`);
  });

  it('answers NOT_FOUND for a URI never pushed', async () => {
    const u = uri('never');
    const err = await errorOf(fetchBlob({ uris: [u] }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no blob is known for URI ${u}`);
  });

  it('answers from the first known URI, in request order', async () => {
    const [one, two] = [unique('first blob'), unique('second blob')];
    await upload(c, one, two);
    const [unknown, u1, u2] = [uri('unknown'), uri('one'), uri('two')];
    await pushBlob({ uris: [u1], blobDigest: digestOf(one) });
    await pushBlob({ uris: [u2], blobDigest: digestOf(two) });

    expect(await fetchBlob({ uris: [unknown, u2, u1] })).toMatchObject({
      uri: u2,
      blobDigest: digestOf(two),
    });
    expect(await fetchBlob({ uris: [unknown, u1, u2] })).toMatchObject({
      uri: u1,
      blobDigest: digestOf(one),
    });
    const err = await errorOf(fetchBlob({ uris: [unknown, uri('other')] }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(/no blob is known for any of 2 URIs/);
  });

  it('associates every URI of one push with the blob', async () => {
    const blob = unique('mirrored blob');
    await upload(c, blob);
    const mirrors = [uri('mirror-a'), uri('mirror-b')];
    await pushBlob({ uris: mirrors, blobDigest: digestOf(blob) });
    for (const u of mirrors) {
      expect(await fetchBlob({ uris: [u] })).toMatchObject({ uri: u, blobDigest: digestOf(blob) });
    }
  });

  it('refuses to push a blob that is not in the CAS with FAILED_PRECONDITION', async () => {
    const absent = digestOf(unique('never uploaded'));
    const u = uri('absent');
    const err = await errorOf(pushBlob({ uris: [u], blobDigest: absent }));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.details).toMatch(`blob ${absent.hash}/${absent.sizeBytes} is not (completely) in the CAS`);
    expect((await errorOf(fetchBlob({ uris: [u] }))).code).toBe(status.NOT_FOUND);
  });

  it('keeps blob and directory associations apart', async () => {
    const blob = unique('kind blob');
    await upload(c, blob);
    const u = uri('kind');
    await pushBlob({ uris: [u], blobDigest: digestOf(blob) });
    const err = await errorOf(fetchDirectory({ uris: [u] }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no directory is known for URI ${u}`);
  });

  it('keeps digest functions apart (a SHA1 push is fetched with digest_function SHA1)', async () => {
    const blob = unique('sha1 blob');
    const sha1 = { hash: createHash('sha1').update(blob).digest('hex'), sizeBytes: blob.length };
    const res = await unaryCall(
      c.cas,
      CAS.batchUpdateBlobs,
      BatchUpdateBlobsRequest.fromPartial({ requests: [{ digest: sha1, data: blob }], digestFunction: 2 }),
    );
    expect(res.responses[0]!.status?.code).toBe(0);
    const u = uri('sha1');
    await pushBlob({ uris: [u], blobDigest: sha1 }); // SHA1 inferred from the hash length
    expect(await fetchBlob({ uris: [u], digestFunction: 2 })).toMatchObject({
      blobDigest: sha1,
      digestFunction: 2,
    });
    expect((await errorOf(fetchBlob({ uris: [u] }))).code).toBe(status.NOT_FOUND); // SHA256 by default
  });
});

describe('directory associations', () => {
  it('serves a pushed complete tree by root_directory_digest', async () => {
    const t = directoryTree();
    await upload(c, t.root, t.sub, t.a, t.b);
    const u = uri('dir');
    const qualifiers = [{ name: 'vcs.commit', value: '0123abcd' }];
    await pushDirectory({ uris: [u], qualifiers, rootDirectoryDigest: digestOf(t.root) });
    const res = await fetchDirectory({ uris: [u], qualifiers });
    expect(res).toMatchObject({
      status: { code: 0 },
      uri: u,
      qualifiers,
      rootDirectoryDigest: digestOf(t.root),
      digestFunction: 1,
    });
    expect((await errorOf(fetchDirectory({ uris: [u] }))).code).toBe(status.NOT_FOUND);
  });

  it.each([
    ['the root directory', 'root'],
    ['a subdirectory', 'sub'],
    ['a file in the root', 'a'],
    ['a file in a subdirectory', 'b'],
  ] as const)('refuses a tree missing %s with FAILED_PRECONDITION', async (_what, withheld) => {
    const t = directoryTree();
    await upload(
      c,
      ...Object.entries(t.blobs)
        .filter(([name]) => name !== withheld)
        .map(([, blob]) => blob),
    );
    const root = digestOf(t.root);
    const u = uri('incomplete');
    const err = await errorOf(pushDirectory({ uris: [u], rootDirectoryDigest: root }));
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    expect(err.details).toMatch(
      `directory tree ${root.hash}/${root.sizeBytes} is not (completely) in the CAS`,
    );
    // Nothing was recorded: even once the tree is complete, the URI is unknown until pushed.
    await upload(c, t.blobs[withheld]);
    expect((await errorOf(fetchDirectory({ uris: [u] }))).code).toBe(status.NOT_FOUND);
    await pushDirectory({ uris: [u], rootDirectoryDigest: root });
    expect((await fetchDirectory({ uris: [u] })).rootDirectoryDigest).toEqual(root);
  });
});

describe('expiry and freshness', () => {
  let blob: Buffer;

  beforeAll(async () => {
    blob = unique('timed blob');
    await upload(c, blob);
  });

  it('does not serve an association whose expire_at has passed', async () => {
    const u = uri('expired');
    await pushBlob({ uris: [u], blobDigest: digestOf(blob), expireAt: timestamp(-60_000) });
    const err = await errorOf(fetchBlob({ uris: [u] }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no blob is known for URI ${u}`);
  });

  it('does not serve a directory association whose expire_at has passed', async () => {
    const t = directoryTree();
    await upload(c, t.root, t.sub, t.a, t.b);
    const u = uri('expired-dir');
    await pushDirectory({ uris: [u], rootDirectoryDigest: digestOf(t.root), expireAt: timestamp(-1000) });
    expect((await errorOf(fetchDirectory({ uris: [u] }))).code).toBe(status.NOT_FOUND);
  });

  it('serves an association until expire_at and reports it as expires_at', async () => {
    const u = uri('expiring');
    const expireAt = timestamp(3_600_000);
    await pushBlob({ uris: [u], blobDigest: digestOf(blob), expireAt });
    const res = await fetchBlob({ uris: [u] });
    expect(res.blobDigest).toEqual(digestOf(blob));
    expect(res.expiresAt).toEqual(expireAt);
  });

  it('honours oldest_content_accepted', async () => {
    const u = uri('fresh');
    await pushBlob({ uris: [u], blobDigest: digestOf(blob) });
    const future = await errorOf(fetchBlob({ uris: [u], oldestContentAccepted: timestamp(60_000) }));
    expect(future.code).toBe(status.NOT_FOUND);
    expect(future.details).toMatch(`no blob is known for URI ${u}`);
    const past = await fetchBlob({ uris: [u], oldestContentAccepted: timestamp(-60_000) });
    expect(past.blobDigest).toEqual(digestOf(blob));
  });
});

describe('bad input', () => {
  it.each([
    ['FetchBlob', () => fetchBlob({ instanceName: 'nope', uris: [uri('i')] })],
    ['FetchDirectory', () => fetchDirectory({ instanceName: 'nope', uris: [uri('i')] })],
    ['PushBlob', () => pushBlob({ instanceName: 'nope', uris: [uri('i')], blobDigest: digestOf('') })],
    [
      'PushDirectory',
      () => pushDirectory({ instanceName: 'nope', uris: [uri('i')], rootDirectoryDigest: digestOf('') }),
    ],
  ])('%s rejects an unknown instance with INVALID_ARGUMENT, naming it', async (_what, request) => {
    const err = await errorOf(request());
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/unknown instance name "nope"/);
  });

  it('keeps instances apart', async () => {
    const blob = unique('instance blob');
    await upload(c, blob);
    const u = uri('instance');
    await pushBlob({ instanceName: 'x', uris: [u], blobDigest: digestOf(blob) });
    expect((await fetchBlob({ instanceName: 'x', uris: [u] })).blobDigest).toEqual(digestOf(blob));
    expect((await errorOf(fetchBlob({ uris: [u] }))).code).toBe(status.NOT_FOUND);
  });

  it.each([
    ['an empty URI', { uris: [uri('ok'), ''] }, /uris\[1\] is empty/],
    [
      'a repeated qualifier',
      {
        uris: [uri('q')],
        qualifiers: [
          { name: 'a', value: '1' },
          { name: 'a', value: '2' },
        ],
      },
      /qualifier "a" is given more than once/,
    ],
    [
      'a qualifier without a name',
      { uris: [uri('q')], qualifiers: [{ name: '', value: 'v' }] },
      /empty name/,
    ],
  ] as [string, DeepPartial<FetchBlobRequest>, RegExp][])(
    'rejects %s with INVALID_ARGUMENT',
    async (_what, req, message) => {
      const fetchErr = await errorOf(fetchBlob(req));
      expect(fetchErr.code).toBe(status.INVALID_ARGUMENT);
      expect(fetchErr.details).toMatch(message);
      const pushErr = await errorOf(pushBlob({ ...req, blobDigest: digestOf('') }));
      expect(pushErr.code).toBe(status.INVALID_ARGUMENT);
      expect(pushErr.details).toMatch(message);
    },
  );

  it('rejects a push without a digest with INVALID_ARGUMENT', async () => {
    const blobErr = await errorOf(pushBlob({ uris: [uri('nodigest')] }));
    expect(blobErr.code).toBe(status.INVALID_ARGUMENT);
    expect(blobErr.details).toMatch(/blob_digest is missing/);
    const dirErr = await errorOf(pushDirectory({ uris: [uri('nodigest')] }));
    expect(dirErr.code).toBe(status.INVALID_ARGUMENT);
    expect(dirErr.details).toMatch(/root_directory_digest is missing/);
  });
});

describe('content evicted from the CAS', () => {
  let tiny: RemexProcess;
  let tc: Clients;

  beforeAll(async () => {
    tiny = await startRemex({ config: { cas: { type: 'memory', maxSize: '200KiB' } } });
    tc = clientsFor(tiny.address);
  });

  afterAll(async () => {
    tc?.close();
    expect(await tiny?.stop()).toBe(0);
  });

  it('is never answered by a fetch, and is answered again once re-uploaded', async () => {
    const blob = unique('evictable blob');
    const t = directoryTree();
    await upload(tc, blob, t.root, t.sub, t.a, t.b);
    const [blobUri, dirUri] = [uri('evict-blob'), uri('evict-dir')];
    await pushBlob({ uris: [blobUri], blobDigest: digestOf(blob) }, tc);
    await pushDirectory({ uris: [dirUri], rootDirectoryDigest: digestOf(t.root) }, tc);
    expect((await fetchBlob({ uris: [blobUri] }, tc)).blobDigest).toEqual(digestOf(blob));
    expect((await fetchDirectory({ uris: [dirUri] }, tc)).rootDirectoryDigest).toEqual(digestOf(t.root));

    // 256 KiB of other blobs push everything above out of the 200 KiB memory CAS.
    const filler = Array.from({ length: 4 }, (_, i) =>
      Buffer.concat([unique(`filler ${i}`), Buffer.alloc(64 * 1024, i)]),
    );
    await upload(tc, ...filler);
    const missing = await unaryCall(
      tc.cas,
      CAS.findMissingBlobs,
      FindMissingBlobsRequest.fromPartial({ blobDigests: [blob, t.root].map(digestOf) }),
    );
    expect(missing.missingBlobDigests).toHaveLength(2);

    const blobErr = await errorOf(fetchBlob({ uris: [blobUri] }, tc));
    expect(blobErr.code).toBe(status.NOT_FOUND);
    expect(blobErr.details).toMatch(`no blob is known for URI ${blobUri}`);
    const dirErr = await errorOf(fetchDirectory({ uris: [dirUri] }, tc));
    expect(dirErr.code).toBe(status.NOT_FOUND);
    expect(dirErr.details).toMatch(`no directory is known for URI ${dirUri}`);

    // The associations were kept: with the content back, fetches answer again.
    await upload(tc, blob, t.root, t.sub, t.a, t.b);
    expect((await fetchBlob({ uris: [blobUri] }, tc)).blobDigest).toEqual(digestOf(blob));
    expect((await fetchDirectory({ uris: [dirUri] }, tc)).rootDirectoryDigest).toEqual(digestOf(t.root));
  });

  it('answers NOT_FOUND for a directory with only one file evicted', async () => {
    const t = directoryTree();
    await upload(tc, t.root, t.sub, t.a, t.b);
    const u = uri('evict-file');
    await pushDirectory({ uris: [u], rootDirectoryDigest: digestOf(t.root) }, tc);
    const filler = Array.from({ length: 4 }, (_, i) =>
      Buffer.concat([unique(`filler ${i}`), Buffer.alloc(64 * 1024, i)]),
    );
    await upload(tc, ...filler);
    // Bring everything but b.txt back: only that file is missing now.
    await upload(tc, t.root, t.sub, t.a);
    const missing = await unaryCall(
      tc.cas,
      CAS.findMissingBlobs,
      FindMissingBlobsRequest.fromPartial({ blobDigests: [t.root, t.sub, t.a, t.b].map(digestOf) }),
    );
    expect(missing.missingBlobDigests).toEqual([digestOf(t.b)]);
    const err = await errorOf(fetchDirectory({ uris: [u] }, tc));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no directory is known for URI ${u}`);
  });
});
