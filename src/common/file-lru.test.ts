import type { FileHandle } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import type { DiskFs } from './disk-fs.js';
import { FileLru, type FileEntry } from './file-lru.js';

/** Files as a set of paths; an rm can be held before it deletes. */
class MemoryFs implements DiskFs {
  readonly files = new Set<string>();
  private held?: { path: string; reached: () => void; released: Promise<void> };

  holdRm(path: string): { reached: Promise<void>; release: () => void } {
    let release!: () => void;
    let reached!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const reachedPromise = new Promise<void>((resolve) => (reached = resolve));
    this.held = { path, reached, released };
    return { reached: reachedPromise, release };
  }

  async open(): Promise<FileHandle> {
    throw new Error('not used');
  }

  async rename(from: string, to: string): Promise<void> {
    if (!this.files.delete(from)) throw Object.assign(new Error(`ENOENT: ${from}`), { code: 'ENOENT' });
    this.files.add(to);
  }

  async rm(path: string): Promise<void> {
    if (this.held?.path === path) {
      const held = this.held;
      this.held = undefined;
      held.reached();
      await held.released;
    }
    this.files.delete(path);
  }
}

function setup(maxBytes: number) {
  const fs = new MemoryFs();
  const lru = new FileLru<FileEntry>({ maxBytes, pathOf: (k) => `/store/${k}`, fs });
  /** Writes a temporary file and commits it as k. */
  const put = (k: string, size: number) => {
    const tmp = `/tmp/${k}-${Math.random()}`;
    fs.files.add(tmp);
    return lru.commit(k, tmp, () => ({ size }));
  };
  return { fs, lru, put };
}

describe('FileLru', () => {
  it('deletes least recently used files beyond its budget, never a pinned one', async () => {
    const { fs, lru, put } = setup(2);
    await put('a', 1);
    await put('b', 1);
    lru.get('a')!.pins = 1;
    await put('c', 1);
    expect([...fs.files].sort()).toEqual(['/store/a', '/store/c']);
    expect(lru.get('b')).toBeUndefined();
    expect(lru.sizeBytes).toBe(2);
  });

  it('a commit that arrives while its key is being deleted waits, then wins', async () => {
    const { fs, lru, put } = setup(1);
    await put('a', 1);
    // Writing b evicts a: a leaves the index, and its file is being deleted...
    const held = fs.holdRm('/store/a');
    const b = put('b', 1);
    await held.reached;
    expect(lru.get('a')).toBeUndefined();
    // ...when a is written again. Its rename must not land before that deletion.
    const again = put('a', 1);
    await new Promise(setImmediate);
    held.release();
    await Promise.all([b, again]);
    expect(lru.get('a')).toBeDefined();
    expect(fs.files.has('/store/a')).toBe(true);
  });
});
