import type { Digest, DigestFunction } from '../common/digest.js';
import { Code, RemexError } from '../common/status.js';
import { Directory } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { keyString } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import type { Cas } from './cas.js';

export interface WalkedDirectory {
  digest: Digest;
  directory: Directory;
}

const FETCH_CONCURRENCY = 64;

export type Unusable = 'missing' | 'invalid';

/**
 * Breadth-first walk of a Directory graph in the CAS, each distinct directory once, in a
 * deterministic order (so an offset into it is a stable page token); each level is
 * fetched concurrently. Directories that are missing, or whose blob is not a Directory
 * message, are reported through onUnusable and their subtrees skipped; without
 * onUnusable, missing ones are skipped and an invalid one is INVALID_ARGUMENT.
 */
export async function* walkTree(
  cas: Cas,
  fn: DigestFunction,
  root: Digest,
  ctx: StoreContext,
  onUnusable?: (digest: Digest, why: Unusable) => void,
): AsyncGenerator<WalkedDirectory> {
  const seen = new Set<string>([keyString({ fn, ...root })]);
  let level: Digest[] = [root];
  while (level.length > 0) {
    const next: Digest[] = [];
    for (let i = 0; i < level.length; i += FETCH_CONCURRENCY) {
      const slice = level.slice(i, i + FETCH_CONCURRENCY);
      const fetched = await Promise.all(
        slice.map(async (digest) => {
          let data: Buffer;
          try {
            data = await cas.getBuffer({ fn, ...digest }, ctx);
          } catch (err) {
            if (err instanceof RemexError && err.code === Code.NOT_FOUND) return 'missing' as const;
            throw err;
          }
          try {
            return Directory.decode(data);
          } catch (err) {
            if (onUnusable) return 'invalid' as const;
            throw new RemexError(
              Code.INVALID_ARGUMENT,
              `blob ${digest.hash}/${digest.sizeBytes} is not a Directory message`,
              {
                cause: err,
              },
            );
          }
        }),
      );
      for (const [j, directory] of fetched.entries()) {
        const digest = slice[j]!;
        if (typeof directory === 'string') {
          onUnusable?.(digest, directory);
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
