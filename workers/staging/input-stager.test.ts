import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, RemexError } from '../../src/common/status.js';
import {
  Command,
  Directory,
  type FileNode,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { DeepPartial } from '../../test/helpers/clients.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { BlobCache } from './blob-cache.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { requestedOutputs } from './command-outputs.js';
import { uploadDirectory } from '../../src/remote/directory-upload.js';
import { MissingBlobsError } from '../../src/remote/missing-blobs-error.js';
import { createOutputParents, stageInputRoot } from './input-stager.js';
import { treeSnapshot } from '../../test/helpers/tree-snapshot.js';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const digest = (b: Buffer) => ({ hash: sha256(b), sizeBytes: b.length });

let remex: RemexProcess;
let cas: CasClient;
let cache: BlobCache;
let dir: string;
let n = 0;
const fresh = () => join(dir, `stage-${n++}`);

beforeAll(async () => {
  remex = await startRemex({ config: { maxBatchTotalSizeBytes: '64KiB' } });
  cas = CasClient.connect(remex.address, { instanceName: '' });
  dir = await mkdtemp(join(tmpdir(), 'remex-stager-'));
  cache = await BlobCache.open(join(dir, 'cache'), cas);
});

afterAll(async () => {
  cas?.close();
  await rm(dir, { recursive: true, force: true });
  expect(await remex?.stop()).toBe(0);
});

/** A source tree with nested, empty, executable, large, duplicate and symlinked entries. */
async function makeSource(): Promise<string> {
  const src = join(dir, `src-${n++}`);
  await mkdir(join(src, 'a', 'b', 'c'), { recursive: true });
  await mkdir(join(src, 'empty'));
  await writeFile(join(src, 'hello.txt'), 'hello\n');
  await writeFile(join(src, 'a', 'same.txt'), 'hello\n');
  await writeFile(join(src, 'a', 'b', 'tool.sh'), '#!/bin/sh\necho tool\n');
  await chmod(join(src, 'a', 'b', 'tool.sh'), 0o755);
  await writeFile(join(src, 'a', 'b', 'c', 'big.bin'), randomBytes(300 << 10));
  await writeFile(join(src, 'zero'), '');
  await symlink('a/b/tool.sh', join(src, 'link'));
  await symlink('/etc/hostname', join(src, 'abs-link'));
  return src;
}

async function putDirectory(d: DeepPartial<Directory>) {
  const encoded = Buffer.from(Directory.encode(Directory.fromPartial(d)).finish());
  await cas.upload([{ digest: digest(encoded), data: encoded }]);
  return digest(encoded);
}

async function errorOf(p: Promise<unknown>): Promise<RemexError> {
  try {
    await p;
  } catch (err) {
    return err as RemexError;
  }
  throw new Error('expected a failure');
}

describe('stageInputRoot', () => {
  it('stages a tree exactly: contents, executable bits, empty files and dirs, symlinks as given', async () => {
    const src = await makeSource();
    const root = await uploadDirectory(cas, src);
    const dest = fresh();
    const staged = await stageInputRoot(cache, root, dest);
    expect(staged).toEqual({ directories: 5, files: 5, symlinks: 2 });
    expect(await treeSnapshot(dest)).toEqual(await treeSnapshot(src));
    expect((await stat(join(dest, 'hello.txt'))).mode & 0o222).toBe(0); // read-only inputs
  });

  it('hardlinks from the blob cache, with separate copies for executable and plain files', async () => {
    const src = join(dir, 'modes');
    await mkdir(src);
    const content = `shared ${Math.random()}\n`;
    await writeFile(join(src, 'plain'), content);
    await writeFile(join(src, 'exec'), content);
    await chmod(join(src, 'exec'), 0o755);
    const root = await uploadDirectory(cas, src);
    const [d1, d2] = [fresh(), fresh()];
    await stageInputRoot(cache, root, d1);
    await stageInputRoot(cache, root, d2);
    const [p1, p2, x1, x2] = await Promise.all(
      [join(d1, 'plain'), join(d2, 'plain'), join(d1, 'exec'), join(d2, 'exec')].map((p) => stat(p)),
    );
    expect(p1!.ino).toBe(p2!.ino); // the same cached file...
    expect(x1!.ino).toBe(x2!.ino);
    expect(p1!.ino).not.toBe(x1!.ino); // ...but one per mode
    expect(p1!.mode & 0o111).toBe(0);
    expect(x1!.mode & 0o111).toBe(0o111);
    expect(p1!.nlink).toBeGreaterThanOrEqual(3);
  });

  it('fails with FAILED_PRECONDITION naming a missing file blob', async () => {
    const absent = digest(randomBytes(32));
    const root = await putDirectory({ files: [{ name: 'gone', digest: absent }] });
    const err = await errorOf(stageInputRoot(cache, root, fresh()));
    expect(err).toBeInstanceOf(MissingBlobsError);
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toBe(`input tree: 1 blob missing from the CAS: ${absent.hash}/32`);
  });

  it('fails with FAILED_PRECONDITION naming a missing directory', async () => {
    const absent = digest(randomBytes(40));
    const root = await putDirectory({ directories: [{ name: 'sub', digest: absent }] });
    const err = await errorOf(stageInputRoot(cache, root, fresh()));
    expect(err.code).toBe(Code.FAILED_PRECONDITION);
    expect(err.message).toBe(`input tree: 1 blob missing from the CAS: ${absent.hash}/40`);
  });

  describe('rejects hostile trees with INVALID_ARGUMENT', () => {
    const file = Buffer.from('payload');
    beforeAll(async () => {
      await cas.upload([{ digest: digest(file), data: file }]);
    });
    const fileNode = (name: string): FileNode => ({
      name,
      digest: digest(file),
      isExecutable: false,
      nodeProperties: undefined,
    });

    it.each([
      ['..', 'the name ".."'],
      ['.', 'the name "."'],
      ['', 'an empty name'],
      ['a/b', 'a name containing "/" ("a/b")'],
      ['../../etc/passwd', 'a name containing "/" ("../../etc/passwd")'],
    ])('a file named %j', async (name, problem) => {
      const root = await putDirectory({ files: [fileNode(name)] });
      const err = await errorOf(stageInputRoot(cache, root, fresh()));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toBe(
        `input root (${root.hash}/${root.sizeBytes}) has an entry with ${problem}; names must be single path segments`,
      );
    });

    it('a directory or symlink named ".." deeper down, with its path in the message', async () => {
      const inner = await putDirectory({ symlinks: [{ name: '..', target: 'x' }] });
      const mid = await putDirectory({ directories: [{ name: 'inner', digest: inner }] });
      const root = await putDirectory({ directories: [{ name: 'mid', digest: mid }] });
      const err = await errorOf(stageInputRoot(cache, root, fresh()));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toBe(
        `input directory "mid/inner" (${inner.hash}/${inner.sizeBytes}) has an entry with the name ".."; names must be single path segments`,
      );
      const dirDotDot = await putDirectory({ directories: [{ name: '..', digest: inner }] });
      expect((await errorOf(stageInputRoot(cache, dirDotDot, fresh()))).code).toBe(Code.INVALID_ARGUMENT);
    });

    it('duplicate names', async () => {
      const sub = await putDirectory({});
      const root = await putDirectory({ files: [fileNode('x')], directories: [{ name: 'x', digest: sub }] });
      const err = await errorOf(stageInputRoot(cache, root, fresh()));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toContain('has two entries named "x"');
    });

    it('a malformed digest, and a blob that is not a Directory', async () => {
      const root = await putDirectory({
        files: [{ ...fileNode('f'), digest: { hash: 'XYZ', sizeBytes: 3 } }],
      });
      const err = await errorOf(stageInputRoot(cache, root, fresh()));
      expect(err.code).toBe(Code.INVALID_ARGUMENT);
      expect(err.message).toContain('file "f" digest has invalid hash "XYZ"');
      const garbage = Buffer.from([0xff, 0xff, 0xff]);
      await cas.upload([{ digest: digest(garbage), data: garbage }]);
      const bad = await errorOf(stageInputRoot(cache, digest(garbage), fresh()));
      expect(bad.code).toBe(Code.INVALID_ARGUMENT);
      expect(bad.message).toContain('is not a valid Directory message');
    });
  });
});

describe('createOutputParents', () => {
  const command = (c: Partial<Command>) => Command.fromPartial({ arguments: ['true'], ...c });

  it('creates the working directory and the parents of outputs, not the outputs', async () => {
    const root = fresh();
    await mkdir(root);
    const cwd = await createOutputParents(
      root,
      requestedOutputs(command({ workingDirectory: 'w', outputPaths: ['out/deep/file', 'top'] })),
    );
    expect(cwd).toBe(join(root, 'w'));
    expect((await stat(join(root, 'w', 'out', 'deep'))).isDirectory()).toBe(true);
    await expect(stat(join(root, 'w', 'out', 'deep', 'file'))).rejects.toThrow();
    await expect(stat(join(root, 'w', 'top'))).rejects.toThrow();
    const legacy = fresh();
    await mkdir(legacy);
    await createOutputParents(
      legacy,
      requestedOutputs(command({ outputFiles: ['f/a.o'], outputDirectories: ['d/tree'] })),
    );
    expect((await stat(join(legacy, 'f'))).isDirectory()).toBe(true);
    expect((await stat(join(legacy, 'd'))).isDirectory()).toBe(true);
    await expect(stat(join(legacy, 'd', 'tree'))).rejects.toThrow();
  });

  it('refuses output paths and working directories that leave the input root', () => {
    for (const [c, message] of [
      [{ outputPaths: ['../escape'] }, 'output_paths entry "../escape" contains a ".." segment'],
      [{ outputPaths: ['/abs'] }, 'output_paths entry "/abs" is absolute; it must be relative'],
      [{ outputFiles: ['a//b'] }, 'output_files entry "a//b" contains an empty segment ("//")'],
      [{ outputFiles: [''] }, 'output_files entry is empty'],
      [{ workingDirectory: 'a/../..' }, 'working_directory "a/../.." contains a ".." segment'],
    ] as [Partial<Command>, string][]) {
      let err: unknown;
      try {
        requestedOutputs(command(c));
      } catch (e) {
        err = e;
      }
      expect(err).toMatchObject({ code: Code.INVALID_ARGUMENT, message });
    }
  });

  it('refuses a parent that is a file or a symlink out of the input root', async () => {
    const root = fresh();
    await mkdir(root);
    await writeFile(join(root, 'file'), '');
    await symlink('/tmp', join(root, 'out'));
    const e1 = await errorOf(
      createOutputParents(root, requestedOutputs(command({ outputPaths: ['file/x'] }))),
    );
    expect(e1).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: 'output "file/x": "file" exists in the input root and is not a directory',
    });
    const e2 = await errorOf(
      createOutputParents(root, requestedOutputs(command({ outputPaths: ['out/x'] }))),
    );
    expect(e2).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: 'output "out/x": "out" is a symlink that does not lead to a directory inside the input root',
    });
  });
});
