import { createHash } from 'node:crypto';
import { chmod, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/common/status.js';
import {
  Command,
  Command_OutputDirectoryFormat,
  Tree,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { BlobCache } from './blob-cache.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { requestedOutputs } from './command-outputs.js';
import { createOutputParents, stageInputRoot } from './input-stager.js';
import { collectOutputs } from './output-collector.js';
import { treeSnapshot } from '../../test/helpers/tree-snapshot.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

let remex: RemexProcess;
let cas: CasClient;
let cache: BlobCache;
let dir: string;
let n = 0;

beforeAll(async () => {
  remex = await startRemex({ config: { maxBatchTotalSizeBytes: '64KiB' } });
  cas = CasClient.connect(remex.address, { instanceName: '' });
  dir = await mkdtemp(join(tmpdir(), 'remex-collector-'));
  cache = await BlobCache.open(join(dir, 'cache'), cas);
});

afterAll(async () => {
  cas?.close();
  await rm(dir, { recursive: true, force: true });
  expect(await remex?.stop()).toBe(0);
});

/** An input root prepared as the executor does, with a working directory "w". */
async function prepare(command: Partial<Command>) {
  const inputRoot = join(dir, `root-${n++}`);
  await mkdir(inputRoot);
  const requested = requestedOutputs(
    Command.fromPartial({ arguments: ['true'], workingDirectory: 'w', ...command }),
  );
  const workingDirectory = await createOutputParents(inputRoot, requested);
  const collect = (directoryFormat = Command_OutputDirectoryFormat.TREE_ONLY) =>
    collectOutputs({ fn: cas.digestFunction, inputRoot, workingDirectory, requested, directoryFormat });
  return { inputRoot, wd: workingDirectory, collect };
}

/** What a typical action leaves behind in `wd`. */
async function produce(wd: string) {
  await writeFile(join(wd, 'out', 'a.txt'), 'A\n');
  await writeFile(join(wd, 'bin', 'tool'), '#!/bin/sh\n');
  await chmod(join(wd, 'bin', 'tool'), 0o755);
  await mkdir(join(wd, 'tree', 'x', 'same'), { recursive: true });
  await mkdir(join(wd, 'tree', 'y', 'same'), { recursive: true });
  await writeFile(join(wd, 'tree', 'x', 'same', 'f'), 'same\n');
  await writeFile(join(wd, 'tree', 'y', 'same', 'f'), 'same\n');
  await writeFile(join(wd, 'tree', 'big'), Buffer.alloc(200 << 10, 7));
  await mkdir(join(wd, 'tree', 'empty'));
  await symlink('x/same/f', join(wd, 'tree', 'ln'));
  await symlink('out/a.txt', join(wd, 'link'));
}

describe('collectOutputs', () => {
  it('collects output_paths: files, a directory as a deduplicated Tree, symlinks; missing ones are absent', async () => {
    const { wd, collect } = await prepare({
      outputPaths: ['bin/tool', 'link', 'nope/missing', 'out/a.txt', 'tree'],
    });
    await produce(wd);
    const out = await collect(Command_OutputDirectoryFormat.TREE_AND_DIRECTORY);
    expect(out.outputFiles).toEqual([
      expect.objectContaining({
        path: 'bin/tool',
        isExecutable: true,
        digest: { hash: sha256('#!/bin/sh\n'), sizeBytes: 10 },
      }),
      expect.objectContaining({
        path: 'out/a.txt',
        isExecutable: false,
        digest: { hash: sha256('A\n'), sizeBytes: 2 },
      }),
    ]);
    expect(out.outputSymlinks).toEqual([{ path: 'link', target: 'out/a.txt', nodeProperties: undefined }]);
    expect(out.outputFileSymlinks).toEqual([]);
    expect(out.outputDirectorySymlinks).toEqual([]);
    expect(out.outputDirectories).toHaveLength(1);
    const od = out.outputDirectories[0]!;
    expect(od).toMatchObject({ path: 'tree', isTopologicallySorted: false });
    expect(od.rootDirectoryDigest).toBeDefined();

    await cas.uploadMissing(out.blobs);
    expect(await cas.findMissing(out.blobs.map((b) => b.digest))).toEqual([]);
    // The Tree: root plus each distinct child once ("same" appears twice with equal content).
    const tree = Tree.decode(await cas.readBlob(od.treeDigest!, 'tree'));
    expect(tree.root!.directories.map((d) => d.name)).toEqual(['empty', 'x', 'y']);
    expect(tree.root!.symlinks).toEqual([{ name: 'ln', target: 'x/same/f', nodeProperties: undefined }]);
    expect(tree.children.length).toBe(3); // empty, x (identical to y, so once), same
    // Round trip: the uploaded directory stages back into the same tree.
    const restaged = join(dir, `restaged-${n++}`);
    await stageInputRoot(cache, od.rootDirectoryDigest!, restaged);
    expect(await treeSnapshot(restaged)).toEqual(await treeSnapshot(join(wd, 'tree')));
  });

  it('collects the whole working directory for the output path ""', async () => {
    const { wd, collect } = await prepare({ outputPaths: [''] });
    await mkdir(join(wd, 'out'));
    await writeFile(join(wd, 'out', 'f'), 'x');
    const out = await collect();
    expect(out.outputDirectories).toEqual([
      expect.objectContaining({ path: '', rootDirectoryDigest: undefined }),
    ]);
    await cas.uploadMissing(out.blobs);
    const tree = Tree.decode(await cas.readBlob(out.outputDirectories[0]!.treeDigest!, 'tree'));
    expect(tree.root!.directories.map((d) => d.name)).toEqual(['out']);
  });

  it('reports legacy symlinks in output_file_symlinks / output_directory_symlinks only', async () => {
    const { wd, collect } = await prepare({
      outputFiles: ['flink', 'dangling'],
      outputDirectories: ['dlink', 'realdir'],
    });
    await mkdir(join(wd, 'realdir'));
    await writeFile(join(wd, 'target.txt'), 't');
    await symlink('target.txt', join(wd, 'flink'));
    await symlink('nowhere', join(wd, 'dangling'));
    await symlink('realdir', join(wd, 'dlink'));
    const out = await collect();
    expect(out.outputFileSymlinks.map((s) => [s.path, s.target])).toEqual([
      ['flink', 'target.txt'],
      ['dangling', 'nowhere'],
    ]);
    expect(out.outputDirectorySymlinks.map((s) => [s.path, s.target])).toEqual([['dlink', 'realdir']]);
    expect(out.outputSymlinks).toEqual([]);
    expect(out.outputDirectories.map((d) => d.path)).toEqual(['realdir']);
  });

  it.each([
    [{ outputFiles: ['d'] }, 'listed in output_files, it is a directory'],
    [{ outputDirectories: ['f'] }, 'listed in output_directories, it is a regular file'],
    [{ outputFiles: ['dl'] }, 'listed in output_files, it is a symlink to a directory'],
    [
      { outputDirectories: ['fl'] },
      'listed in output_directories, it is a symlink to something other than a directory',
    ],
  ] as [{ outputFiles?: string[]; outputDirectories?: string[] }, string][])(
    'a legacy output of the wrong type is FAILED_PRECONDITION (%j)',
    async (command, why) => {
      const { wd, collect } = await prepare(command);
      await mkdir(join(wd, 'd'));
      await writeFile(join(wd, 'f'), '');
      await symlink('d', join(wd, 'dl'));
      await symlink('f', join(wd, 'fl'));
      const path = [...(command.outputFiles ?? []), ...(command.outputDirectories ?? [])][0]!;
      await expect(collect()).rejects.toMatchObject({
        code: Code.FAILED_PRECONDITION,
        message: `collecting output "${path}": ${why}`,
      });
    },
  );

  it('does not follow a symlinked parent out of the input root', async () => {
    const outside = join(dir, `outside-${n++}`);
    await mkdir(outside);
    await writeFile(join(outside, 'secret'), 'host file');
    const { wd, collect } = await prepare({ outputPaths: ['escape/secret'] });
    await rm(join(wd, 'escape'), { recursive: true }); // the action replaces the parent made for it
    await symlink(outside, join(wd, 'escape'));
    await expect(collect()).rejects.toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: 'collecting output "escape/secret": its parent directory lies outside the input root',
    });
  });

  it('follows a symlinked parent that stays inside the input root', async () => {
    const { wd, collect, inputRoot } = await prepare({ outputPaths: ['alias/f'] });
    await mkdir(join(inputRoot, 'real'));
    await writeFile(join(inputRoot, 'real', 'f'), 'inside');
    await rm(join(wd, 'alias'), { recursive: true });
    await symlink('../real', join(wd, 'alias'));
    const out = await collect();
    expect(out.outputFiles).toEqual([
      expect.objectContaining({ path: 'alias/f', digest: { hash: sha256('inside'), sizeBytes: 6 } }),
    ]);
  });
});
