import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { chmod, copyFile, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { digestString, type Digest } from '../../src/common/digest.js';
import { toRemexError } from '../../src/common/error-mapping.js';
import type { CasClient } from '../../src/remote/cas-client.js';
import { forEachLimit } from '../../src/remote/concurrency.js';
import { removeTree } from '../../src/remote/remove-tree.js';
import { makeOwnedDir } from './stale-dirs.js';

/** One file the cache should hold: a blob, in its executable or plain form. */
export interface CacheEntry {
  digest: Digest;
  executable: boolean;
}

const PLAIN_MODE = 0o444;
const EXEC_MODE = 0o555;
const LINK_FALLBACK = new Set(['EXDEV', 'EMLINK', 'EPERM']);

/**
 * The worker's local, content-addressed blob cache: one read-only file per blob under
 * `{dir}/{function}/{hash[0..2]}/{hash}-{size}`, plus a separate `-x` copy with the
 * executable bits when a blob is needed as an executable (hardlinks share mode bits, so a
 * blob cannot be both). Inputs are materialised by hardlinking these files (copying when
 * the filesystem refuses). Blobs come from the CAS, hash-checked, through a temporary file
 * and an atomic rename; concurrent requests for the same blob share one download.
 *
 * The CAS is the source of truth; this cache only avoids fetching a blob twice. It is not
 * size-bounded yet. A hosttools action that makes an input writable and modifies it in
 * place would alter the cached copy: sandboxed runners mount inputs read-only.
 */
export class BlobCache {
  private readonly inflight = new Map<string, Promise<boolean>>();

  private constructor(
    readonly dir: string,
    readonly cas: CasClient,
    private readonly tmpDir: string,
  ) {}

  /**
   * Opens (creating if needed) the cache in `dir`. Downloads go through a temporary
   * directory of this process; those of dead processes are cleared. Several workers may
   * share one cache directory.
   */
  static async open(dir: string, cas: CasClient): Promise<BlobCache> {
    return new BlobCache(dir, cas, await makeOwnedDir(join(dir, 'tmp'), 'p'));
  }

  /** Removes this process's temporary directory. */
  async close(): Promise<void> {
    await removeTree(this.tmpDir);
  }

  /** Where the cached copy of a blob lives (whether or not it is there yet). */
  pathOf(d: Digest, executable: boolean): string {
    const { segment } = this.cas.digestFunction;
    return join(this.dir, segment, d.hash.slice(0, 2), `${d.hash}-${d.sizeBytes}${executable ? '-x' : ''}`);
  }

  private tmpPath(): string {
    return join(this.tmpDir, randomUUID());
  }

  /**
   * Makes sure every entry is in the cache, fetching what is missing from the CAS in
   * parallel. Returns the digests the CAS does not have either (nothing is thrown for them).
   */
  async ensure(entries: readonly CacheEntry[], signal?: AbortSignal): Promise<Digest[]> {
    const wanted = new Map<string, { digest: Digest; modes: Set<boolean> }>();
    for (const { digest, executable } of entries) {
      const key = digestString(digest);
      const w = wanted.get(key) ?? { digest, modes: new Set<boolean>() };
      w.modes.add(executable);
      wanted.set(key, w);
    }
    // Which blobs have no cached copy in either form?
    const absent: { digest: Digest; preferExecutable: boolean }[] = [];
    await forEachLimit([...wanted.values()], 64, async ({ digest, modes }) => {
      if ((await exists(this.pathOf(digest, false))) || (await exists(this.pathOf(digest, true)))) return;
      absent.push({ digest, preferExecutable: !modes.has(false) });
    });
    const missing = await this.fetch(absent, signal);
    const missingKeys = new Set(missing.map(digestString));
    // Derive the other form where one is needed and only its sibling is cached.
    await forEachLimit([...wanted.values()], 16, async ({ digest, modes }) => {
      if (missingKeys.has(digestString(digest))) return;
      for (const executable of modes) {
        const path = this.pathOf(digest, executable);
        if (await exists(path)) continue;
        const tmp = this.tmpPath();
        await copyFile(this.pathOf(digest, !executable), tmp, constants.COPYFILE_FICLONE);
        await this.place(tmp, path, executable);
      }
    });
    return missing;
  }

  /** Downloads blobs with no cached copy; each goes in as its preferred form. Returns the absent ones. */
  private async fetch(
    blobs: readonly { digest: Digest; preferExecutable: boolean }[],
    signal?: AbortSignal,
  ): Promise<Digest[]> {
    const waits: Promise<{ digest: Digest; found: boolean }>[] = [];
    const mine: { digest: Digest; preferExecutable: boolean; tmp: string }[] = [];
    for (const blob of blobs) {
      const key = digestString(blob.digest);
      const pending = this.inflight.get(key);
      // Share a download already under way; if it fails (say its lease was cancelled), try again here.
      if (pending) {
        waits.push(
          pending.then(
            (found) => ({ digest: blob.digest, found }),
            async () => ({ digest: blob.digest, found: (await this.fetch([blob], signal)).length === 0 }),
          ),
        );
      } else mine.push({ ...blob, tmp: this.tmpPath() });
    }
    if (mine.length > 0) {
      const download = (async () => {
        const absent = new Set(
          (
            await this.cas.downloadToFiles(
              mine.map((m) => ({ digest: m.digest, path: m.tmp })),
              signal,
            )
          ).map(digestString),
        );
        await forEachLimit(mine, 16, async (m) => {
          if (!absent.has(digestString(m.digest))) {
            await this.place(m.tmp, this.pathOf(m.digest, m.preferExecutable), m.preferExecutable);
          }
        });
        return absent;
      })();
      for (const m of mine) {
        const key = digestString(m.digest);
        const found = download.then((absent) => !absent.has(key));
        found.catch(() => undefined);
        this.inflight.set(key, found);
        void found.finally(() => this.inflight.delete(key)).catch(() => undefined);
        waits.push(found.then((f) => ({ digest: m.digest, found: f })));
      }
      await download.catch(async (err: unknown) => {
        await Promise.all(mine.map((m) => rm(m.tmp, { force: true })));
        throw err;
      });
    }
    return (await Promise.all(waits)).filter((w) => !w.found).map((w) => w.digest);
  }

  /** Gives a finished temporary file its mode and moves it into place atomically. */
  private async place(tmp: string, path: string, executable: boolean): Promise<void> {
    await chmod(tmp, executable ? EXEC_MODE : PLAIN_MODE);
    await mkdir(dirname(path), { recursive: true });
    await rename(tmp, path);
  }

  /** Materialises a cached blob at `dest` (hardlink; a copy where linking is refused). */
  async linkTo(d: Digest, executable: boolean, dest: string): Promise<void> {
    const src = this.pathOf(d, executable);
    try {
      await link(src, dest);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      if (!LINK_FALLBACK.has(code)) throw toRemexError(err, `linking blob ${digestString(d)} to ${dest}`);
      await copyFile(src, dest, constants.COPYFILE_FICLONE);
      await chmod(dest, executable ? EXEC_MODE : PLAIN_MODE);
    }
  }

  /**
   * Reads small blobs (Directory messages) from the cache, fetching and caching the ones it
   * lacks. Returns the contents by digest string, and the digests the CAS does not have.
   */
  async readSmall(
    digests: readonly Digest[],
    signal?: AbortSignal,
  ): Promise<{ found: Map<string, Buffer>; missing: Digest[] }> {
    const found = new Map<string, Buffer>();
    const toFetch: Digest[] = [];
    await forEachLimit(digests, 64, async (d) => {
      try {
        found.set(digestString(d), await readFile(this.pathOf(d, false)));
      } catch {
        toFetch.push(d);
      }
    });
    if (toFetch.length === 0) return { found, missing: [] };
    const fetched = await this.cas.readBlobs(toFetch, signal);
    await forEachLimit(toFetch, 16, async (d) => {
      const data = fetched.found.get(digestString(d));
      if (!data) return;
      found.set(digestString(d), data);
      const tmp = this.tmpPath();
      await writeFile(tmp, data);
      await this.place(tmp, this.pathOf(d, false), false);
    });
    return { found, missing: fetched.missing };
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}
