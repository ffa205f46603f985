import { mkdir, mkdtemp, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { removeTree } from '../../src/remote/remove-tree.js';

/**
 * Scratch directories owned by one process, named `{prefix}{pid}-{random}`, so that
 * several workers can share a work directory: each makes its own, and removes those whose
 * process is gone (left behind by a crash), never another live process's.
 */
export async function makeOwnedDir(parent: string, prefix: string): Promise<string> {
  await mkdir(parent, { recursive: true });
  await removeStaleDirs(parent, prefix);
  return mkdtemp(join(parent, `${prefix}${process.pid}-`));
}

async function removeStaleDirs(parent: string, prefix: string): Promise<void> {
  for (const name of await readdir(parent)) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(name.slice(prefix.length).split('-')[0]);
    if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && !isAlive(pid)) {
      await removeTree(join(parent, name));
    }
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
