import Docker from 'dockerode';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ContentAddressableStorageService,
  Directory,
  FindMissingBlobsRequest,
  GetTreeRequest,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { BlobCache } from '../../workers/staging/blob-cache.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { ChrootStore } from '../../workers/runners/chroot-store.js';
import { CHROOT_ROOT_PROPERTY, UserchrootRunner } from '../../workers/runners/userchroot-runner.js';
import { digestOf, sha256 } from '../helpers/blobs.js';
import { BUSYBOX, makeBusyboxRootfs, remexChroot } from '../helpers/busybox-rootfs.js';
import { clientsFor, unaryCall, type Clients } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const DOCKER_ENV = fileURLToPath(new URL('../../scripts/docker-env.sh', import.meta.url));
const TEST_IMAGE = process.env.REMEX_TEST_IMAGE ?? 'remex-test/busybox:1';
const EXPORT_LABEL = 'build.remex.purpose=chroot-export';

let remex: RemexProcess;
let c: Clients;
let busyboxDigest: Digest;

beforeAll(async () => {
  remex = await startRemex({ args: ['--workers', '0'] });
  c = clientsFor(remex.address);
  busyboxDigest = digestOf(await readFile(BUSYBOX));
});
afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
  if (remex) await rm(remex.dataDir, { recursive: true, force: true });
});

function parseDigest(text: string): Digest {
  const m = /^([0-9a-f]{64})\/(\d+)$/.exec(text);
  if (!m) throw new Error(`not a hash/size digest: ${JSON.stringify(text)}`);
  return { hash: m[1]!, sizeBytes: Number(m[2]) };
}

const findMissing = async (digests: Digest[]) =>
  (
    await unaryCall(
      c.cas,
      ContentAddressableStorageService.findMissingBlobs,
      FindMissingBlobsRequest.fromPartial({ blobDigests: digests }),
    )
  ).missingBlobDigests;

/** Every Directory of the tree under `root` (GetTree), keyed by digest "hash/size". */
async function getTree(root: Digest): Promise<Map<string, Directory>> {
  const dirs: Directory[] = await new Promise((resolve, reject) => {
    const out: Directory[] = [];
    const s = c.cas.getTree(GetTreeRequest.fromPartial({ rootDigest: root }));
    s.on('data', (r: { directories: Directory[] }) => out.push(...r.directories));
    s.on('end', () => resolve(out));
    s.on('error', reject);
  });
  return new Map(
    dirs.map((d) => {
      const digest = digestOf(Buffer.from(Directory.encode(d).finish()));
      return [`${digest.hash}/${digest.sizeBytes}`, d];
    }),
  );
}

/** The Directory at a slash-separated path under the root of `tree`. */
function dirAt(tree: Map<string, Directory>, root: Digest, path: string): Directory {
  let dir = tree.get(`${root.hash}/${root.sizeBytes}`);
  for (const name of path.split('/').filter(Boolean)) {
    const node = dir?.directories.find((d) => d.name === name);
    dir = node?.digest && tree.get(`${node.digest.hash}/${node.digest.sizeBytes}`);
  }
  if (!dir) throw new Error(`no directory ${path} in the tree`);
  return dir;
}

describe('remex chroot upload', () => {
  let rootfs: string;
  beforeAll(async () => {
    rootfs = await makeBusyboxRootfs();
  });
  afterAll(async () => {
    if (rootfs) await rm(rootfs, { recursive: true, force: true });
  });

  it('prints the root digest, which the CAS then has, with the whole tree', async () => {
    const { digest } = await remexChroot(['upload', rootfs], remex.address);
    const root = parseDigest(digest);
    expect(await findMissing([root, busyboxDigest])).toEqual([]);

    const tree = await getTree(root);
    expect(tree.has(digest)).toBe(true);
    const top = dirAt(tree, root, '');
    expect(top.directories.map((d) => d.name)).toEqual(['bin', 'dev', 'etc', 'proc', 'root', 'tmp', 'usr']);
    const bin = dirAt(tree, root, 'bin');
    expect(bin.files).toEqual([
      expect.objectContaining({ name: 'busybox', digest: busyboxDigest, isExecutable: true }),
    ]);
    expect(bin.symlinks).toContainEqual(expect.objectContaining({ name: 'sh', target: 'busybox' }));
    expect(dirAt(tree, root, 'usr/bin').symlinks).toContainEqual(
      expect.objectContaining({ name: 'env', target: '../../bin/busybox' }),
    );
    const passwd = dirAt(tree, root, 'etc').files.find((f) => f.name === 'passwd');
    expect(passwd?.digest).toEqual(digestOf(await readFile(join(rootfs, 'etc', 'passwd'))));
    // Every file blob of the tree is there too.
    const files = [...tree.values()].flatMap((d) => d.files.map((f) => f.digest!));
    expect(await findMissing(files)).toEqual([]);

    // The same directory gives the same digest.
    expect((await remexChroot(['upload', rootfs], remex.address)).digest).toBe(digest);
  });

  it('fails, saying why, on a path that is not a directory and on bad usage', async () => {
    await expect(remexChroot(['upload', join(rootfs, 'no-such-dir')], remex.address)).rejects.toThrow(
      `${join(rootfs, 'no-such-dir')} is not a directory`,
    );
    await expect(remexChroot(['frobnicate', rootfs], remex.address)).rejects.toThrow(
      'unknown subcommand "frobnicate"',
    );
    await expect(remexChroot(['upload'], remex.address)).rejects.toThrow(
      'remex chroot upload takes exactly one DIR',
    );
  });
});

describe('remex chroot from-image', () => {
  const docker = new Docker();
  const exportContainers = async () =>
    docker.listContainers({ all: true, filters: { label: [EXPORT_LABEL] } });

  beforeAll(async () => {
    // Starts Debian's dockerd when no engine answers and builds the busybox test image.
    try {
      await promisify(execFile)('bash', [DOCKER_ENV], { timeout: 300_000 });
    } catch (err) {
      const { stdout = '', stderr = '' } = err as { stdout?: string; stderr?: string };
      throw new Error(`scripts/docker-env.sh could not provide a Docker engine:\n${stdout}${stderr}`, {
        cause: err,
      });
    }
  }, 330_000);

  it("uploads the image's file system and prints its digest; the container is removed", async () => {
    const before = (await exportContainers()).length;
    const { digest } = await remexChroot(['from-image', TEST_IMAGE], remex.address);
    const root = parseDigest(digest);
    expect(await findMissing([root])).toEqual([]);
    const tree = await getTree(root);
    const top = dirAt(tree, root, '');
    expect(top.files.map((f) => f.name)).not.toContain('.dockerenv');
    expect(top.directories.map((d) => d.name)).toEqual(expect.arrayContaining(['bin', 'etc', 'usr']));
    expect(dirAt(tree, root, 'bin').files).toContainEqual(
      expect.objectContaining({ name: 'busybox', digest: busyboxDigest, isExecutable: true }),
    );
    expect(sha256(await readFile(BUSYBOX))).toBe(busyboxDigest.hash);
    expect((await exportContainers()).length).toBe(before);

    // The root runs actions under the userchroot runner.
    const work = await mkdtemp(join(tmpdir(), 'remex-chroot-image-'));
    const cas = CasClient.connect(remex.address, { instanceName: '' });
    const cache = await BlobCache.open(join(work, 'cache'), cas);
    const store = new ChrootStore(join(work, 'chroots'), cache);
    try {
      const input = join(work, 'input');
      await mkdir(input);
      const r = await new UserchrootRunner({ chroots: store }).run({
        argv: ['sh', '-c', 'cat /etc/passwd | head -1; echo made > out.txt'],
        env: { PATH: '/bin:/usr/bin' },
        cwd: input,
        inputRoot: input,
        signal: new AbortController().signal,
        stdoutPath: join(work, 'stdout'),
        stderrPath: join(work, 'stderr'),
        platform: new Map([[CHROOT_ROOT_PROPERTY, digest]]),
      });
      expect(await readFile(join(work, 'stderr'), 'utf8')).toBe('');
      expect(r.exitCode).toBe(0);
      expect(await readFile(join(work, 'stdout'), 'utf8')).toBe('root:x:0:0:root:/root:/bin/sh\n');
      expect(await readFile(join(input, 'out.txt'), 'utf8')).toBe('made\n');
    } finally {
      await store.close();
      await cache.close();
      cas.close();
      await rm(work, { recursive: true, force: true });
    }
  });

  it('fails with the reason when the engine has no such image', async () => {
    await expect(remexChroot(['from-image', 'remex-test/no-such-image:404'], remex.address)).rejects.toThrow(
      'the Docker engine has no image "remex-test/no-such-image:404"',
    );
  });
});
