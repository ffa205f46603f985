import type { StoreContext } from '../common/store-context.js';

/**
 * A small-value store keyed by strings: the ActionCache (action digest → ActionResult)
 * and the Remote Asset index (URI + qualifiers → digest) are built on it.
 * Values are small (kilobytes), so they are passed whole.
 */
export interface KeyValueStore {
  readonly name: string;
  get(key: string, ctx: StoreContext): Promise<Buffer | undefined>;
  put(key: string, value: Buffer, ctx: StoreContext): Promise<void>;
  /** Removes the entry if there is one (a corrupt entry found by its reader). */
  delete(key: string, ctx: StoreContext): Promise<void>;
  close?(): Promise<void>;
}
