import { randomUUID } from 'node:crypto';
import { mkdir, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { digestString, type Digest, type DigestFunction } from '../../src/common/digest.js';
import { toRemexError } from '../../src/common/error-mapping.js';
import { RemexError } from '../../src/common/status.js';
import type { BlobCache } from '../staging/blob-cache.js';
import { MissingBlobsError } from '../../src/remote/missing-blobs-error.js';
import { stageInputRoot } from '../staging/input-stager.js';
import { removeTree } from '../../src/remote/remove-tree.js';
import { makeOwnedDir } from '../staging/stale-dirs.js';

/**
 * Root filesystems for the userchroot runner, materialised from the CAS once and reused:
 * the Directory tree of a root digest is staged with the blob cache (files are hardlinks
 * to its read-only copies, so the runner must mount the root read-only) into
 * `{dir}/{function}/{hash}-{size}`. A root is staged in a scratch directory of this
 * process and renamed into place, so a root directory that exists is complete; several
 * actions (and several worker processes sharing `dir`) asking for the same root at once
 * wait for one materialisation.
 *
 * The CAS is the source of truth; this store only avoids staging a root twice. Roots are
 * kept until the directory is removed by hand (not size-bounded yet).
 */
export class ChrootStore {
  private readonly inflight = new Map<string, Promise<string>>();
  private scratch: Promise<string> | undefined;
  private count = 0;

  constructor(
    readonly dir: string,
    private readonly cache: BlobCache,
  ) {}

  /** How many roots this store has staged itself (roots found already in place are not counted). */
  get materialisations(): number {
    return this.count;
  }

  /** The digest function of root digests (the CAS client's). */
  get digestFunction(): DigestFunction {
    return this.cache.cas.digestFunction;
  }

  /** Where the root with this digest lives (whether or not it is there yet). */
  pathOf(root: Digest): string {
    return join(this.dir, this.cache.cas.digestFunction.segment, `${root.hash}-${root.sizeBytes}`);
  }

  /**
   * The host directory holding the root filesystem `root`, staging it first when needed.
   * A root missing from the CAS, wholly or in part, fails with FAILED_PRECONDITION naming
   * the root and the missing blobs. Aborting `signal` stops the wait, not a
   * materialisation other actions may be waiting for.
   */
  async get(root: Digest, signal?: AbortSignal): Promise<string> {
    signal?.throwIfAborted();
    const path = this.pathOf(root);
    if (await isDirectory(path)) return path;
    const key = digestString(root);
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.materialise(root, path);
      this.inflight.set(key, pending);
      void pending.then(
        () => this.inflight.delete(key),
        () => this.inflight.delete(key),
      );
    }
    return abortable(pending, signal);
  }

  private async materialise(root: Digest, path: string): Promise<string> {
    const what = `chroot root ${digestString(root)}`;
    this.scratch ??= makeOwnedDir(join(this.dir, 'tmp'), 'p');
    const staging = join(await this.scratch, randomUUID());
    try {
      await stageInputRoot(this.cache, root, staging);
      await mkdir(join(path, '..'), { recursive: true });
      try {
        await rename(staging, path);
        this.count++;
      } catch (err) {
        // Another worker process sharing the directory put the same root in place first.
        const code = (err as NodeJS.ErrnoException).code;
        if ((code !== 'ENOTEMPTY' && code !== 'EEXIST') || !(await isDirectory(path))) throw err;
      }
      return path;
    } catch (err) {
      if (err instanceof MissingBlobsError) throw new MissingBlobsError(err.missing, what);
      if (err instanceof RemexError) throw err.prefixed(what);
      throw toRemexError(err, `materialising ${what}`);
    } finally {
      await removeTree(staging);
    }
  }

  /** Removes this process's scratch directory (materialised roots stay). */
  async close(): Promise<void> {
    const scratch = await this.scratch?.catch(() => undefined);
    if (scratch) await removeTree(scratch);
  }
}

async function isDirectory(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isDirectory();
  } catch {
    return false;
  }
}

/** Waits for `promise` unless `signal` aborts first (the promise itself goes on). */
function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason as Error);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err as Error);
      },
    );
  });
}
