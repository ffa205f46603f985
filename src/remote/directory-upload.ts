import type { Digest } from '../common/digest.js';
import type { CasClient } from './cas-client.js';
import { buildTree } from './tree-builder.js';

/**
 * Uploads a local directory as a REAPI input root: its files and every Directory message,
 * skipping what the CAS already holds. Returns the root Directory digest. (For tests and
 * for `remex execute`, which sends a local directory as an action's inputs.)
 */
export async function uploadDirectory(cas: CasClient, dir: string, signal?: AbortSignal): Promise<Digest> {
  const tree = await buildTree(cas.digestFunction, dir, signal);
  await cas.uploadMissing(
    [...tree.files, ...[tree.root, ...tree.children].map((d) => ({ digest: d.digest, data: d.encoded }))],
    signal,
  );
  return tree.root.digest;
}
