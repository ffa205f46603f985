import * as fs from 'node:fs/promises';

/**
 * The filesystem calls whose order the disk stores depend on: opening (to read, or to
 * fsync), renaming into place and deleting. The stores take them from their options so
 * that tests can pause or count them; by default they are node:fs/promises.
 */
export interface DiskFs {
  open(path: string, flags: string): Promise<fs.FileHandle>;
  rename(from: string, to: string): Promise<void>;
  rm(path: string, options?: { force?: boolean; recursive?: boolean }): Promise<void>;
}

export const nodeFs: DiskFs = fs;

/** fsyncs a directory: the entries created or renamed into it survive a power loss. */
export async function syncDir(fs: DiskFs, dir: string): Promise<void> {
  const handle = await fs.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}
