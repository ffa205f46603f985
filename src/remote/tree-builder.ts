import { lstat, readdir, readlink } from 'node:fs/promises';
import { join } from 'node:path';
import { digestOf, digestString, type Digest, type DigestFunction } from '../common/digest.js';
import {
  Directory,
  Tree,
  type DirectoryNode,
  type FileNode,
  type SymlinkNode,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { UploadItem } from './cas-client.js';
import { Limiter } from './concurrency.js';
import { digestFile } from './file-digest.js';

export interface EncodedDirectory {
  digest: Digest;
  directory: Directory;
  encoded: Buffer;
}

/** A local directory as a REAPI Merkle tree. */
export interface BuiltTree {
  root: EncodedDirectory;
  /** Every distinct directory below the root, once each, parents before children. */
  children: EncodedDirectory[];
  /** The file blobs the tree refers to, one per distinct digest, read from disk on upload. */
  files: UploadItem[];
}

const byName = (a: { name: string }, b: { name: string }) =>
  Buffer.compare(Buffer.from(a.name), Buffer.from(b.name));

/**
 * Turns a local directory into canonical Directory messages (entries sorted by UTF-8 name,
 * files with digests and executable bits, symlinks with their targets, never followed).
 * Other file types (sockets, fifos, devices) are left out. Files are hashed as streams,
 * several at once. Used for output directories and to upload input trees.
 */
export async function buildTree(fn: DigestFunction, dir: string, signal?: AbortSignal): Promise<BuiltTree> {
  const hashing = new Limiter(16);
  const all = new Map<string, EncodedDirectory>();
  const files = new Map<string, UploadItem>();

  const build = async (path: string): Promise<EncodedDirectory> => {
    signal?.throwIfAborted();
    const fileNodes: FileNode[] = [];
    const dirNodes: DirectoryNode[] = [];
    const linkNodes: SymlinkNode[] = [];
    await Promise.all(
      (await readdir(path)).map(async (name) => {
        const child = join(path, name);
        const info = await lstat(child);
        if (info.isFile()) {
          const digest = await hashing.run(() => digestFile(fn, child, signal));
          files.set(digestString(digest), { digest, path: child });
          fileNodes.push({
            name,
            digest,
            isExecutable: (info.mode & 0o100) !== 0,
            nodeProperties: undefined,
          });
        } else if (info.isDirectory()) {
          dirNodes.push({ name, digest: (await build(child)).digest });
        } else if (info.isSymbolicLink()) {
          linkNodes.push({ name, target: await readlink(child), nodeProperties: undefined });
        }
      }),
    );
    const directory: Directory = {
      files: fileNodes.sort(byName),
      directories: dirNodes.sort(byName),
      symlinks: linkNodes.sort(byName),
      nodeProperties: undefined,
    };
    const encoded = Buffer.from(Directory.encode(directory).finish());
    const node = { digest: await digestOf(fn, encoded), directory, encoded };
    all.set(digestString(node.digest), node);
    return node;
  };

  const root = await build(dir);
  // Children in a deterministic pre-order, each distinct directory once.
  const children: EncodedDirectory[] = [];
  const seen = new Set<string>();
  const visit = (node: EncodedDirectory) => {
    for (const sub of node.directory.directories) {
      const key = digestString(sub.digest!);
      if (seen.has(key)) continue;
      seen.add(key);
      const child = all.get(key)!;
      children.push(child);
      visit(child);
    }
  };
  visit(root);
  return { root, children, files: [...files.values()] };
}

/** The encoded Tree message (root plus deduplicated children) of a built tree. */
export function encodeTree(tree: BuiltTree): Buffer {
  return Buffer.from(
    Tree.encode({ root: tree.root.directory, children: tree.children.map((c) => c.directory) }).finish(),
  );
}
