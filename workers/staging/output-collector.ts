import { lstat, readlink, realpath, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { digestOf, type DigestFunction } from '../../src/common/digest.js';
import { toRemexError } from '../../src/common/error-mapping.js';
import { failedPrecondition } from '../../src/common/status.js';
import {
  Command_OutputDirectoryFormat,
  type OutputDirectory,
  type OutputFile,
  type OutputSymlink,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { UploadItem } from '../../src/remote/cas-client.js';
import type { RequestedOutput, RequestedOutputs } from './command-outputs.js';
import { forEachLimit } from '../../src/remote/concurrency.js';
import { digestFile } from '../../src/remote/file-digest.js';
import { isWithin } from '../../src/remote/paths.js';
import { buildTree, encodeTree } from '../../src/remote/tree-builder.js';

/** The output part of an ActionResult, plus the blobs it refers to (still to be uploaded). */
export interface CollectedOutputs {
  outputFiles: OutputFile[];
  outputDirectories: OutputDirectory[];
  outputSymlinks: OutputSymlink[];
  outputFileSymlinks: OutputSymlink[];
  outputDirectorySymlinks: OutputSymlink[];
  blobs: UploadItem[];
}

export interface CollectOptions {
  fn: DigestFunction;
  /** The staged input root (absolute). */
  inputRoot: string;
  /** The working directory (absolute, as createOutputParents returned it). */
  workingDirectory: string;
  requested: RequestedOutputs;
  directoryFormat: Command_OutputDirectoryFormat;
  signal?: AbortSignal;
}

const emptyOutputs = (): CollectedOutputs => ({
  outputFiles: [],
  outputDirectories: [],
  outputSymlinks: [],
  outputFileSymlinks: [],
  outputDirectorySymlinks: [],
  blobs: [],
});

/**
 * Collects what a finished action produced at its requested output paths: regular files
 * as OutputFiles (digest, executable bit), directories as Tree messages (and Directory
 * messages when the Command asks for DIRECTORY_ONLY or TREE_AND_DIRECTORY), symlinks as
 * OutputSymlinks without following them (output_symlinks for output_paths; the legacy
 * output_file_symlinks / output_directory_symlinks for output_files / output_directories).
 * Outputs that do not exist are left out. A legacy output of the wrong type is
 * FAILED_PRECONDITION, as REAPI specifies. Nothing is uploaded here.
 */
export async function collectOutputs(options: CollectOptions): Promise<CollectedOutputs> {
  const rootReal = await realpath(options.inputRoot);
  const parts: CollectedOutputs[] = options.requested.outputs.map(emptyOutputs);
  await forEachLimit(options.requested.outputs, 8, async (output, i) => {
    try {
      await collectOne(options, rootReal, output, parts[i]!);
    } catch (err) {
      throw toRemexError(err, `collecting output ${JSON.stringify(output.path)}`);
    }
  });
  const all = emptyOutputs();
  for (const p of parts)
    for (const k of Object.keys(all) as (keyof CollectedOutputs)[]) all[k].push(...(p[k] as never[]));
  return all;
}

async function collectOne(
  options: CollectOptions,
  rootReal: string,
  output: RequestedOutput,
  into: CollectedOutputs,
): Promise<void> {
  const { fn, requested, signal } = options;
  const { path, kind } = output;
  let abs = options.workingDirectory;
  if (output.segments.length > 0) {
    // Resolve the parent: a symlink placed by the action must not lead the worker out of the input root.
    const parent = await realpath(dirname(join(abs, ...output.segments))).catch(() => undefined);
    if (parent === undefined) return;
    if (!isWithin(rootReal, parent))
      throw failedPrecondition('its parent directory lies outside the input root');
    abs = join(parent, basename(join(...output.segments)));
  }
  const info = await lstat(abs).catch(() => undefined);
  if (!info) return;

  if (info.isSymbolicLink()) {
    const symlink: OutputSymlink = { path, target: await readlink(abs), nodeProperties: undefined };
    if (requested.style === 'paths') {
      into.outputSymlinks.push(symlink);
      return;
    }
    const target = await stat(abs).catch(() => undefined); // undefined: dangling, allowed
    if (kind === 'file') {
      if (target?.isDirectory())
        throw failedPrecondition('listed in output_files, it is a symlink to a directory');
      into.outputFileSymlinks.push(symlink);
    } else {
      if (target && !target.isDirectory()) {
        throw failedPrecondition(
          'listed in output_directories, it is a symlink to something other than a directory',
        );
      }
      into.outputDirectorySymlinks.push(symlink);
    }
  } else if (info.isFile()) {
    if (kind === 'directory') throw failedPrecondition('listed in output_directories, it is a regular file');
    const digest = await digestFile(fn, abs, signal);
    into.outputFiles.push({
      path,
      digest,
      isExecutable: (info.mode & 0o100) !== 0,
      contents: Buffer.alloc(0),
      nodeProperties: undefined,
    });
    into.blobs.push({ digest, path: abs });
  } else if (info.isDirectory()) {
    if (kind === 'file') throw failedPrecondition('listed in output_files, it is a directory');
    const tree = await buildTree(fn, abs, signal);
    const encoded = encodeTree(tree);
    const treeDigest = await digestOf(fn, encoded);
    into.blobs.push(...tree.files, { digest: treeDigest, data: encoded });
    const format = options.directoryFormat;
    const withDirectories =
      format === Command_OutputDirectoryFormat.DIRECTORY_ONLY ||
      format === Command_OutputDirectoryFormat.TREE_AND_DIRECTORY;
    if (withDirectories) {
      for (const d of [tree.root, ...tree.children]) into.blobs.push({ digest: d.digest, data: d.encoded });
    }
    into.outputDirectories.push({
      path,
      treeDigest,
      isTopologicallySorted: false,
      rootDirectoryDigest: withDirectories ? tree.root.digest : undefined,
    });
  }
}
