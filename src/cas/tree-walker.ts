import type { Digest, DigestFunction } from '../common/digest.js';
import { Code, RemexError } from '../common/status.js';
import { Directory } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { keyString, type StoreContext } from './blob-store.js';
import type { Cas } from './cas.js';

export interface WalkedDirectory {
  digest: Digest;
  directory: Directory;
}

const FETCH_CONCURRENCY = 64;

/**
 * Breadth-first walk of a Directory graph in the CAS, each distinct directory once, in a
 * deterministic order (so an offset into it is a stable page token). Directories that
 * are missing are reported through onMissing and their subtrees skipped; each level is
 * fetched concurrently.
 */
export async function* walkTree(
  cas: Cas,
  fn: DigestFunction,
  root: Digest,
  ctx: StoreContext,
  onMissing?: (digest: Digest) => void,
): AsyncGenerator<WalkedDirectory> {
  const seen = new Set<string>([keyString({ fn, ...root })]);
  let level: Digest[] = [root];
  while (level.length > 0) {
    const next: Digest[] = [];
    for (let i = 0; i < level.length; i += FETCH_CONCURRENCY) {
      const slice = level.slice(i, i + FETCH_CONCURRENCY);
      const fetched = await Promise.all(
        slice.map(async (digest) => {
          try {
            return Directory.decode(await cas.getBuffer({ fn, ...digest }, ctx));
          } catch (err) {
            if (err instanceof RemexError && err.code === Code.NOT_FOUND) return undefined;
            if (err instanceof RemexError) throw err;
            throw new RemexError(
              Code.DATA_LOSS,
              `directory ${digest.hash}/${digest.sizeBytes} cannot be parsed`,
              {
                cause: err,
              },
            );
          }
        }),
      );
      for (const [j, directory] of fetched.entries()) {
        const digest = slice[j]!;
        if (!directory) {
          onMissing?.(digest);
          continue;
        }
        yield { digest, directory };
        for (const child of directory.directories) {
          if (!child.digest) continue;
          const k = keyString({ fn, ...child.digest });
          if (seen.has(k)) continue;
          seen.add(k);
          next.push(child.digest);
        }
      }
    }
    level = next;
  }
}

/** Every file digest in a directory (not recursive). */
export function fileDigests(directory: Directory): Digest[] {
  return directory.files.flatMap((f) => (f.digest ? [f.digest] : []));
}
