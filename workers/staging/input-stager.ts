import { lstat, mkdir, realpath, stat, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { digestString, validateDigest, type Digest } from '../../src/common/digest.js';
import { toRemexError } from '../../src/common/error-mapping.js';
import { RemexError, invalidArgument } from '../../src/common/status.js';
import { Directory } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { BlobCache } from './blob-cache.js';
import type { RequestedOutputs } from './command-outputs.js';
import { forEachLimit } from '../../src/remote/concurrency.js';
import { MissingBlobsError } from '../../src/remote/missing-blobs-error.js';
import { checkNodeName, isWithin } from '../../src/remote/paths.js';

export interface StagedInputs {
  directories: number;
  files: number;
  symlinks: number;
}

/**
 * Fetches every Directory of an input tree, level by level (one batched read per level,
 * served from the blob cache where possible), validating each: entry names must be single
 * path segments and unique, digests well formed. Keyed by digest string.
 */
export async function fetchInputTree(
  cache: BlobCache,
  root: Digest,
  signal?: AbortSignal,
): Promise<Map<string, Directory>> {
  const fn = cache.cas.digestFunction;
  const tree = new Map<string, Directory>();
  // Where each directory was first met, for error messages ('' is the input root).
  const pathOf = new Map<string, string>([[digestString(root), '']]);
  const describe = (path: string) => (path === '' ? 'input root' : `input directory ${JSON.stringify(path)}`);
  let level = [validateDigest(root, fn, 'input_root_digest')];
  while (level.length > 0) {
    const wanted = [...new Map(level.map((d) => [digestString(d), d])).values()].filter(
      (d) => !tree.has(digestString(d)),
    );
    const { found, missing } = await cache.readSmall(wanted, signal);
    if (missing.length > 0) throw new MissingBlobsError(missing, 'input tree');
    const next: Digest[] = [];
    for (const d of wanted) {
      const key = digestString(d);
      const path = pathOf.get(key)!;
      const where = `${describe(path)} (${key})`;
      let dir: Directory;
      try {
        dir = Directory.decode(found.get(key)!);
      } catch (err) {
        throw invalidArgument(`${where} is not a valid Directory message: ${(err as Error).message}`);
      }
      checkEntries(dir, where);
      for (const file of dir.files) validateDigest(file.digest, fn, `${where}: file "${file.name}" digest`);
      for (const sub of dir.directories) {
        const child = validateDigest(sub.digest, fn, `${where}: directory "${sub.name}" digest`);
        const childKey = digestString(child);
        if (!pathOf.has(childKey)) pathOf.set(childKey, path === '' ? sub.name : `${path}/${sub.name}`);
        next.push(child);
      }
      tree.set(key, dir);
    }
    level = next;
  }
  return tree;
}

function checkEntries(dir: Directory, where: string): void {
  const seen = new Set<string>();
  for (const { name } of [...dir.files, ...dir.directories, ...dir.symlinks]) {
    checkNodeName(name, where);
    if (seen.has(name)) throw invalidArgument(`${where} has two entries named ${JSON.stringify(name)}`);
    seen.add(name);
  }
  for (const s of dir.symlinks) {
    if (s.target === '' || s.target.includes('\0')) {
      throw invalidArgument(`${where} has a symlink ${JSON.stringify(s.name)} with an invalid target`);
    }
  }
}

/**
 * Stages the input root `root` into `dest` (created; it must not hold anything yet):
 * directories are made, files hardlinked from the blob cache (blobs it lacks are fetched
 * from the CAS in parallel first), symlinks created with their targets as given. A blob
 * missing from the CAS fails with FAILED_PRECONDITION naming it; a hostile tree (bad
 * names, duplicates, malformed digests) with INVALID_ARGUMENT.
 */
export async function stageInputRoot(
  cache: BlobCache,
  root: Digest,
  dest: string,
  signal?: AbortSignal,
): Promise<StagedInputs> {
  const tree = await fetchInputTree(cache, root, signal);
  const files: { digest: Digest; executable: boolean; path: string }[] = [];
  const links: { target: string; path: string }[] = [];
  let directories = 0;
  const walk = async (d: Digest, path: string): Promise<void> => {
    signal?.throwIfAborted();
    await mkdir(path, { recursive: directories === 0 });
    directories++;
    const dir = tree.get(digestString(d))!;
    for (const f of dir.files)
      files.push({ digest: f.digest!, executable: f.isExecutable, path: join(path, f.name) });
    for (const s of dir.symlinks) links.push({ target: s.target, path: join(path, s.name) });
    for (const sub of dir.directories) await walk(sub.digest!, join(path, sub.name));
  };
  try {
    await walk(root, dest);
    const missing = await cache.ensure(files, signal);
    if (missing.length > 0) throw new MissingBlobsError(missing, 'input tree');
    await forEachLimit(files, 64, (f) => cache.linkTo(f.digest, f.executable, f.path));
    await forEachLimit(links, 64, (l) => symlink(l.target, l.path));
  } catch (err) {
    if (err instanceof RemexError) throw err;
    throw toRemexError(err, 'staging inputs');
  }
  return { directories, files: files.length, symlinks: links.length };
}

/**
 * Creates the working directory (if the tree lacks it) and the parent directories of every
 * requested output, as REAPI asks of the worker before the run. A parent that exists but
 * is not a directory, or a symlink leading out of the input root, is INVALID_ARGUMENT.
 * Returns the absolute working directory.
 */
export async function createOutputParents(inputRoot: string, requested: RequestedOutputs): Promise<string> {
  const rootReal = await realpath(inputRoot);
  const workingDirectory = await makeDirs(
    rootReal,
    rootReal,
    requested.workingDirectory,
    'working_directory',
  );
  for (const output of requested.outputs) {
    await makeDirs(
      rootReal,
      workingDirectory,
      output.segments.slice(0, -1),
      `output ${JSON.stringify(output.path)}`,
    );
  }
  return workingDirectory;
}

async function makeDirs(rootReal: string, base: string, segments: string[], what: string): Promise<string> {
  let current = base;
  for (const [i, segment] of segments.entries()) {
    current = join(current, segment);
    const shown = JSON.stringify(segments.slice(0, i + 1).join('/'));
    const info = await lstat(current).catch(() => undefined);
    if (!info) {
      await mkdir(current);
    } else if (info.isSymbolicLink()) {
      const real = await realpath(current).catch(() => undefined);
      if (!real || !isWithin(rootReal, real) || !(await stat(real)).isDirectory()) {
        throw invalidArgument(
          `${what}: ${shown} is a symlink that does not lead to a directory inside the input root`,
        );
      }
      current = real;
    } else if (!info.isDirectory()) {
      throw invalidArgument(`${what}: ${shown} exists in the input root and is not a directory`);
    }
  }
  return current;
}
