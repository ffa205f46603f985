import type { BlobKey } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';

/**
 * An index of the blobs a backend holds, and when each was last confirmed there. It
 * answers "which of these might be present" in one round trip, where the backend (S3)
 * would need one request per blob. It is never the source of truth for bytes: see
 * IndexedBlobStore and docs/adr/0005-cas-index-exactness.md for how its answers are used.
 *
 * Every method takes a whole batch and costs one round trip, whatever its size.
 * Times are milliseconds since the epoch, read from the caller's clock.
 */
export interface BlobIndex {
  readonly name: string;
  /** The indexed keys among `keys`, as keyString(key) -> time of the last confirmation. */
  lookup(keys: readonly BlobKey[], ctx: StoreContext): Promise<Map<string, number>>;
  /** Records that the backend holds these blobs as of `at` (insert or refresh). */
  add(keys: readonly BlobKey[], at: number, ctx: StoreContext): Promise<void>;
  /**
   * Refreshes the confirmation time of keys that are still indexed; never inserts. A key
   * removed meanwhile (a repair, a deletion) stays removed, so a confirmation racing a
   * removal cannot bring back an entry for a gone object.
   */
  confirm(keys: readonly BlobKey[], at: number, ctx: StoreContext): Promise<void>;
  /** Drops these keys from the index (absent keys are ignored). */
  remove(keys: readonly BlobKey[], ctx: StoreContext): Promise<void>;
  /** Releases resources (connections) the index owns. */
  close?(): Promise<void>;
}
