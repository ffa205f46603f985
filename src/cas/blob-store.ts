import type { Readable } from 'node:stream';
import type { Digest, DigestFunction } from '../common/digest.js';
import type { StoreContext } from '../common/store-context.js';

/** A blob's identity: the digest and the function that produced it. */
export interface BlobKey extends Digest {
  fn: DigestFunction;
}

export interface ReadRange {
  offset: number;
  /** Bytes to read from offset; undefined reads to the end. */
  limit?: number;
}

/**
 * The storage interface every CAS backend and behaviour implements.
 *
 * Contract (checked by the storage contract suite, blob-store.contract.ts):
 * - get streams the requested range of a blob, or throws NOT_FOUND;
 * - put consumes the stream and stores the blob only if the stream ends cleanly with
 *   exactly sizeBytes bytes: an erroring stream leaves nothing behind. Hash checking is
 *   done by the caller (the services verify while receiving), not by the store;
 * - findMissing returns exactly the keys that are absent, in one call for the whole set.
 */
export interface BlobStore {
  readonly name: string;
  get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable>;
  put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void>;
  /**
   * Stores a complete, already verified blob that sits in a file on local disk. The file
   * is consumed (moved or deleted). Stores on the same filesystem rename it into place.
   */
  putFile?(key: BlobKey, path: string, ctx: StoreContext): Promise<void>;
  findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]>;
  /** Releases resources (file handles, connections). */
  close?(): Promise<void>;
}

/** A stable string for a key, unique across digest functions: "sha256/<hash>-<size>". */
export function keyString(key: BlobKey): string {
  return `${key.fn.segment}/${key.hash}-${key.sizeBytes}`;
}

export function describeKey(key: BlobKey): string {
  return `${key.fn.name === 'SHA256' ? '' : key.fn.segment + ':'}${key.hash}/${key.sizeBytes}`;
}
