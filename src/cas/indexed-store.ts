import type { Readable } from 'node:stream';
import { Code, RemexError } from '../common/status.js';
import { keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import type { BlobIndex } from './blob-index.js';

export interface IndexedBlobStoreOptions {
  /**
   * How long an index entry's last confirmation stands in for asking the backend, in ms.
   * 0 (the default) confirms every "present" answer against the backend: exact. With a
   * window W > 0 an object deleted behind the index (a lifecycle rule, an operator) can be
   * reported present for up to W after its last confirmation.
   */
  confirmAfterMs?: number;
  /** Milliseconds since the epoch; injectable for tests. */
  clock?: () => number;
  name?: string;
}

/**
 * A BlobStore whose FindMissingBlobs is answered from an index (e.g. PgBlobIndex) in
 * front of a backend that is slow to ask per blob (e.g. S3BlobStore). Source of truth:
 * the backend, for bytes and for existence; the index only says where to look. The rules
 * (docs/adr/0005-cas-index-exactness.md):
 *
 * 1. A key absent from the index is reported missing without asking the backend; the
 *    client uploads it again, which is safe.
 * 2. A key present in the index whose last confirmation is older than confirmAfterMs is
 *    confirmed with one batched backend.findMissing call; entries whose object is gone
 *    are removed from the index (repair) and reported missing. With confirmAfterMs = 0
 *    every present answer is confirmed, so an entry whose object is gone is never
 *    reported present. With confirmAfterMs > 0 the operator trades exactness for fewer
 *    backend requests: an object deleted behind the index may be reported present for up
 *    to confirmAfterMs after its last confirmation.
 * 3. put adds the key to the index only after the backend stored the blob.
 * 4. A get that finds the object gone (NOT_FOUND) removes the index entry (repair).
 * 5. Deletions made by remex itself go index-first, then the backend.
 *
 * Every error in these rules errs towards "missing", never towards "present".
 */
export class IndexedBlobStore implements BlobStore {
  readonly name: string;
  private readonly confirmAfterMs: number;
  private readonly clock: () => number;
  /** Present only when the backend can take files (the upload manager checks for it). */
  readonly putFile?: (key: BlobKey, path: string, ctx: StoreContext) => Promise<void>;

  constructor(
    private readonly backend: BlobStore,
    private readonly index: BlobIndex,
    options: IndexedBlobStoreOptions = {},
  ) {
    this.name = options.name ?? `indexed(${backend.name})`;
    this.confirmAfterMs = options.confirmAfterMs ?? 0;
    this.clock = options.clock ?? Date.now;
    if (!(this.confirmAfterMs >= 0))
      throw new RemexError(Code.INVALID_ARGUMENT, `${this.name}: confirmAfterMs must be >= 0`);
    const putFile = backend.putFile?.bind(backend);
    if (putFile) {
      this.putFile = async (key, path, ctx) => {
        await putFile(key, path, ctx);
        await this.index.add([key], this.clock(), ctx);
      };
    }
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    try {
      return await this.backend.get(key, range, ctx);
    } catch (err) {
      if (err instanceof RemexError && err.code === Code.NOT_FOUND) {
        // Repair, best effort: the answer is NOT_FOUND either way, and with
        // confirmAfterMs = 0 the next findMissing would find the entry stale anyway.
        await this.index.remove([key], ctx).catch(() => undefined);
      }
      throw err;
    }
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    await this.backend.put(key, data, ctx);
    await this.index.add([key], this.clock(), ctx);
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    if (keys.length === 0) return [];
    const indexed = await this.index.lookup(keys, ctx);
    const now = this.clock();
    const missing = new Set<string>();
    const stale = new Map<string, BlobKey>();
    for (const key of keys) {
      const k = keyString(key);
      const confirmedAt = indexed.get(k);
      if (confirmedAt === undefined) missing.add(k);
      else if (!this.fresh(now - confirmedAt)) stale.set(k, key);
    }
    if (stale.size > 0) {
      const gone = await this.backend.findMissing([...stale.values()], ctx);
      for (const key of gone) {
        const k = keyString(key);
        missing.add(k);
        stale.delete(k);
      }
      await Promise.all([
        this.index.remove(gone, ctx),
        // With no window, confirmation times are never read: skip the write.
        this.confirmAfterMs > 0 ? this.index.confirm([...stale.values()], now, ctx) : undefined,
      ]);
    }
    return keys.filter((key) => missing.has(keyString(key)));
  }

  async close(): Promise<void> {
    await Promise.all([this.backend.close?.(), this.index.close?.()]);
  }

  /** A confirmation this old still stands. Clock skew (a negative age) does not count as fresh. */
  private fresh(ageMs: number): boolean {
    return this.confirmAfterMs > 0 && ageMs >= 0 && ageMs < this.confirmAfterMs;
  }
}
