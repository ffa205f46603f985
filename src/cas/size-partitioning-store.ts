import { createReadStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import type { BlobKey, BlobStore, ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { callChild } from './child-errors.js';

/**
 * Routes each blob by its size: blobs of at most thresholdBytes live in `small` (e.g.
 * Redis or memory, good at many tiny objects), larger ones in `large` (e.g. disk or S3).
 * Like Buildbarn's SizeDistinguishingBlobAccess. Source of truth: each child for its own
 * size range; the two ranges are disjoint, so nothing is ever looked up in both.
 *
 * findMissing splits the set, asks both children at once and concatenates their answers;
 * a child's error fails the whole call, prefixed with that child's name.
 */
export class SizePartitioningBlobStore implements BlobStore {
  readonly name: string;

  constructor(
    private readonly small: BlobStore,
    private readonly large: BlobStore,
    private readonly thresholdBytes: number,
    name = 'size-partitioning',
  ) {
    if (!Number.isSafeInteger(thresholdBytes) || thresholdBytes < 0)
      throw new RangeError(`${name}: thresholdBytes must be a whole number ≥ 0, not ${thresholdBytes}`);
    this.name = name;
  }

  /** The child that holds key. */
  childFor(key: BlobKey): BlobStore {
    return key.sizeBytes <= this.thresholdBytes ? this.small : this.large;
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    const child = this.childFor(key);
    return callChild(child, () => child.get(key, range, ctx));
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    const child = this.childFor(key);
    await callChild(child, () => child.put(key, data, ctx));
  }

  /** Renames into place when the chosen child can; otherwise streams the file into it. */
  async putFile(key: BlobKey, path: string, ctx: StoreContext): Promise<void> {
    const child = this.childFor(key);
    await callChild(child, async () => {
      if (child.putFile) return child.putFile(key, path, ctx);
      try {
        await child.put(key, createReadStream(path, { highWaterMark: 1 << 20 }), ctx);
      } finally {
        await rm(path, { force: true });
      }
    });
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    const small: BlobKey[] = [];
    const large: BlobKey[] = [];
    for (const key of keys) (key.sizeBytes <= this.thresholdBytes ? small : large).push(key);
    const ask = (child: BlobStore, part: BlobKey[]) =>
      part.length === 0 ? Promise.resolve([]) : callChild(child, () => child.findMissing(part, ctx));
    const [missingSmall, missingLarge] = await Promise.all([ask(this.small, small), ask(this.large, large)]);
    return missingSmall.length === 0 ? missingLarge : missingSmall.concat(missingLarge);
  }

  async close(): Promise<void> {
    await Promise.all([this.small.close?.(), this.large.close?.()]);
  }
}
