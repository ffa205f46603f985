import { chmod, mkdir, symlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { digestOf, digestString, type Digest } from '../common/digest.js';
import { ActionResult, Directory, Tree } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { CasClient } from '../remote/cas-client.js';
import { checkNodeName, splitRelativePath } from '../remote/paths.js';

/**
 * Writes an ActionResult's outputs under `root`, as a local run would have left them:
 * files (with their executable bit), output directories rebuilt from their Trees, and
 * symlinks. Paths are checked so that a hostile result cannot write outside `root`.
 */
export async function downloadOutputs(
  cas: CasClient,
  result: ActionResult,
  root: string,
  signal?: AbortSignal,
): Promise<string[]> {
  const files: { digest: Digest; path: string; executable: boolean }[] = [];
  const dirs: string[] = [];
  const links: { path: string; target: string }[] = [];
  for (const f of result.outputFiles) {
    splitRelativePath(f.path, 'output file');
    if (f.digest) files.push({ digest: f.digest, path: join(root, f.path), executable: f.isExecutable });
  }
  for (const d of result.outputDirectories) {
    splitRelativePath(d.path, 'output directory');
    if (!d.treeDigest || d.treeDigest.hash === '') continue;
    const tree = Tree.decode(await cas.readBlob(d.treeDigest, `tree of ${d.path}`, signal));
    const children = new Map<string, Directory>();
    // Children are named by digest in their parents; the encoding is deterministic, so
    // re-encoding a child gives the bytes its digest was computed from.
    for (const child of tree.children) {
      children.set(
        digestString(await digestOf(cas.digestFunction, Buffer.from(Directory.encode(child).finish()))),
        child,
      );
    }
    const walk = (dir: Directory, at: string) => {
      dirs.push(at);
      for (const f of dir.files) {
        checkNodeName(f.name, at);
        if (f.digest) files.push({ digest: f.digest, path: join(at, f.name), executable: f.isExecutable });
      }
      for (const s of dir.symlinks) {
        checkNodeName(s.name, at);
        links.push({ path: join(at, s.name), target: s.target });
      }
      for (const sub of dir.directories) {
        checkNodeName(sub.name, at);
        const child = sub.digest && children.get(digestString(sub.digest));
        if (child) walk(child, join(at, sub.name));
      }
    };
    if (tree.root) walk(tree.root, join(root, d.path));
  }
  for (const s of [
    ...result.outputSymlinks,
    ...result.outputFileSymlinks,
    ...result.outputDirectorySymlinks,
  ]) {
    splitRelativePath(s.path, 'output symlink');
    links.push({ path: join(root, s.path), target: s.target });
  }
  for (const d of dirs) await mkdir(d, { recursive: true });
  for (const f of files) await mkdir(dirname(f.path), { recursive: true });
  await cas.downloadToFiles(files, signal);
  for (const f of files) await chmod(f.path, f.executable ? 0o755 : 0o644);
  for (const l of links) {
    await mkdir(dirname(l.path), { recursive: true });
    await symlink(l.target, l.path).catch((err: NodeJS.ErrnoException) => {
      if (err.code !== 'EEXIST') throw err;
    });
  }
  return [...files.map((f) => f.path), ...links.map((l) => l.path)];
}
