import type { DiskFs } from './disk-fs.js';

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
}

/**
 * The in-memory index of a disk store's files, least recently used first, and the one
 * place that moves files into place (commit) and deletes them beyond the budget (evict).
 */
export class FileLru<E extends FileEntry> {
  private readonly entries = new Map<string, E>(); // insertion order = LRU order
  private bytes = 0;

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
   * budget, never `k` itself.
   */
  async commit(k: string, file: string, entryFor: (existing: E | undefined) => E): Promise<void> {
    await this.options.fs.rename(file, this.options.pathOf(k));
    this.set(k, entryFor(this.entries.get(k)));
    await this.evict(k);
  }

  /**
   * Deletes least recently used files until the budget holds. Pinned entries and `keep`
   * (the file just written) are skipped, so the store may exceed its budget briefly.
   */
  async evict(keep?: string): Promise<void> {
    if (this.bytes <= this.options.maxBytes) return;
    const victims: string[] = [];
    for (const [k, entry] of this.entries) {
      if (this.bytes <= this.options.maxBytes) break;
      if (entry.pins || k === keep) continue;
      this.forget(k);
      victims.push(k);
    }
    await Promise.all(victims.map((k) => this.options.fs.rm(this.options.pathOf(k), { force: true })));
  }
}
