import type { Readable } from 'node:stream';
import { keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';

export interface ExistenceCachingOptions {
  name?: string;
  /** The clock (ms), injectable for tests. */
  now?: () => number;
}

/**
 * Remembers which blobs the child recently had, and answers findMissing for those
 * without asking it (Buildbarn's ExistenceCachingBlobAccess). A key is remembered for
 * ttlMs after the child said it was present (findMissing), stored it (put, putFile) or
 * served it (get); hits do not extend that. Absence is never cached: every key not
 * remembered is asked of the child, in one call per findMissing.
 *
 * Source of truth: the child. This trades exactness for fewer child requests: a blob
 * the child loses (evicts, expires) may still be reported present for up to ttlMs.
 * Keep ttlMs well below the child's shortest blob lifetime. At most maxEntries keys are
 * remembered; the least recently confirmed are forgotten first.
 */
export class ExistenceCachingBlobStore implements BlobStore {
  readonly name: string;
  readonly putFile?: (key: BlobKey, path: string, ctx: StoreContext) => Promise<void>;
  /** keyString → time (ms) the entry expires; Map order is confirmation order, oldest first. */
  private readonly seen = new Map<string, number>();
  private readonly now: () => number;

  constructor(
    private readonly child: BlobStore,
    private readonly ttlMs: number,
    private readonly maxEntries: number,
    options: ExistenceCachingOptions = {},
  ) {
    this.name = options.name ?? 'existence-caching';
    this.now = options.now ?? Date.now;
    if (child.putFile) {
      const putFile = child.putFile.bind(child);
      this.putFile = async (key, path, ctx) => {
        await putFile(key, path, ctx);
        this.remember([key]);
      };
    }
  }

  /** How many keys are remembered (expired ones included until they are next looked up). */
  get size(): number {
    return this.seen.size;
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    const stream = await this.child.get(key, range, ctx);
    this.remember([key]);
    return stream;
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    await this.child.put(key, data, ctx);
    this.remember([key]);
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    const now = this.now();
    const unknown = new Map<string, BlobKey>(); // a key asked twice in one call goes to the child once
    for (const key of keys) {
      const k = keyString(key);
      const expires = this.seen.get(k);
      if (expires !== undefined && expires > now) continue;
      if (expires !== undefined) this.seen.delete(k);
      unknown.set(k, key);
    }
    if (unknown.size === 0) return [];
    const missing = await this.child.findMissing([...unknown.values()], ctx);
    const missingKeys = new Set(missing.map(keyString));
    this.remember(
      [...unknown].filter(([k]) => !missingKeys.has(k)).map(([, key]) => key),
      now,
    );
    // Answer for every key asked, duplicates included, in the order asked.
    return missing.length === 0 ? [] : keys.filter((key) => missingKeys.has(keyString(key)));
  }

  async close(): Promise<void> {
    await this.child.close?.();
  }

  private remember(keys: readonly BlobKey[], now = this.now()): void {
    const expires = now + this.ttlMs;
    for (const key of keys) {
      const k = keyString(key);
      this.seen.delete(k);
      this.seen.set(k, expires);
    }
    for (const k of this.seen.keys()) {
      if (this.seen.size <= this.maxEntries) break;
      this.seen.delete(k);
    }
  }
}
