import { toRemexError } from '../common/error-mapping.js';
import type { RemexError } from '../common/status.js';
import type { BlobStore } from './blob-store.js';

/** Runs a child store's call; its error is prefixed with the child's name (once). */
export async function callChild<T>(child: BlobStore, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    throw childError(err, child.name);
  }
}

/** The error as a RemexError prefixed with the child's name, unless it already is. */
export function childError(err: unknown, childName: string): RemexError {
  const e = toRemexError(err);
  return e.message.startsWith(`${childName}: `) ? e : e.prefixed(childName);
}
