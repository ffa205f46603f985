import { dirname } from 'node:path';
import { syncDir, type DiskFs } from './disk-fs.js';
import { KeyedChain } from './keyed-chain.js';

export interface FileEntry {
  size: number;
  /** Readers of the file: a pinned entry is never evicted. */
  pins?: number;
}

export interface FileLruOptions {
  /** Size budget: least recently used files are deleted beyond it. */
  maxBytes: number;
  /** Where the file of a key lives. */
  pathOf: (k: string) => string;
  fs: DiskFs;
  /** fsync the directory after a rename into it, before the key is indexed. */
  syncDirs?: boolean;
}

/**
 * The in-memory index of a disk store's files, least recently used first, and the one
 * place that moves files into place (commit) and deletes them beyond the budget (evict).
 *
 * Commit (rename + index insert) and the deletion of an evicted file run one after the
 * other per key (KeyedChain), so the index never says present for a file that is gone:
 * eviction drops a key from the index at once (the budget is counted then), and deletes
 * its file in the key's turn only if no commit has indexed the key again meanwhile.
 */
export class FileLru<E extends FileEntry> {
  private readonly entries = new Map<string, E>(); // insertion order = LRU order
  private bytes = 0;
  private readonly turns = new KeyedChain<string>();

  constructor(private readonly options: FileLruOptions) {}

  get sizeBytes(): number {
    return this.bytes;
  }

  get(k: string): E | undefined {
    return this.entries.get(k);
  }

  /** Indexes `entry` as the most recently used, replacing what `k` had. */
  set(k: string, entry: E): void {
    const old = this.entries.get(k);
    if (old) {
      this.entries.delete(k);
      this.bytes -= old.size;
    }
    this.entries.set(k, entry);
    this.bytes += entry.size;
  }

  /** Makes `k`, indexed as `entry`, the most recently used. */
  touch(k: string, entry: E): void {
    this.entries.delete(k);
    this.entries.set(k, entry);
  }

  /** Drops `k` from the index (its file is gone, or about to be). */
  forget(k: string): void {
    const entry = this.entries.get(k);
    if (!entry) return;
    this.entries.delete(k);
    this.bytes -= entry.size;
  }

  /**
   * Renames `file` into place as `k` and indexes it as the most recently used (`entryFor`
   * gets what `k` had, if anything, and returns the entry to keep), then evicts beyond the
   * budget, never `k` itself. With `syncDirs`, the rename is durable before `k` is indexed.
   */
  async commit(k: string, file: string, entryFor: (existing: E | undefined) => E): Promise<void> {
    const target = this.options.pathOf(k);
    await this.turns.run(k, async () => {
      await this.options.fs.rename(file, target);
      try {
        if (this.options.syncDirs) await syncDir(this.options.fs, dirname(target));
      } finally {
        // Indexed even if the fsync failed: the file is in place, and the index follows the files.
        this.set(k, entryFor(this.entries.get(k)));
      }
    });
    // Outside k's turn: evicting waits for the victims' turns, which may be commits that evict.
    await this.evict(k);
  }

  /**
   * Deletes least recently used files until the budget holds. Pinned entries and `keep`
   * (the file just written) are skipped, so the store may exceed its budget briefly.
   */
  async evict(keep?: string): Promise<void> {
    if (this.bytes <= this.options.maxBytes) return;
    const deletions: Promise<void>[] = [];
    for (const [k, entry] of this.entries) {
      if (this.bytes <= this.options.maxBytes) break;
      if (entry.pins || k === keep) continue;
      this.forget(k);
      deletions.push(this.turns.run(k, () => this.unlinkUnlessIndexed(k)));
    }
    await Promise.all(deletions);
  }

  /** Drops `k` and deletes its file in k's turn (unless a commit indexed it again meanwhile). */
  async remove(k: string): Promise<void> {
    this.forget(k);
    await this.turns.run(k, () => this.unlinkUnlessIndexed(k));
  }

  private async unlinkUnlessIndexed(k: string): Promise<void> {
    // A commit of k since it was evicted has put a new file in place and indexed it: keep that.
    if (this.entries.has(k)) return;
    await this.options.fs.rm(this.options.pathOf(k), { force: true });
  }
}
