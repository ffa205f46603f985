import { chmod, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * Removes a directory tree an action may have left read-only. Only directories are made
 * writable again: files may be hardlinks into the blob cache, whose modes must not change.
 */
export async function removeTree(path: string): Promise<void> {
  try {
    await rm(path, { recursive: true, force: true });
  } catch {
    await makeDirectoriesWritable(path);
    await rm(path, { recursive: true, force: true });
  }
}

async function makeDirectoriesWritable(path: string): Promise<void> {
  await chmod(path, 0o700).catch(() => undefined);
  const entries = await readdir(path, { withFileTypes: true }).catch(() => []);
  for (const e of entries) if (e.isDirectory()) await makeDirectoriesWritable(join(path, e.name));
}
