import { createHash, randomBytes } from 'node:crypto';
import * as fs from 'node:fs/promises';
import { join } from 'node:path';
import type { StoreContext } from '../common/store-context.js';
import { toRemexError } from '../common/error-mapping.js';
import { nodeFs, type DiskFs } from '../common/disk-fs.js';
import { FileLru } from '../common/file-lru.js';
import type { KeyValueStore } from './kv-store.js';

export interface DiskKeyValueStoreOptions {
  path: string;
  maxBytes: number;
  name?: string;
  /** Filesystem calls (tests pause or count them); default node:fs/promises. */
  fs?: DiskFs;
}

/**
 * Key-value store on the local filesystem: one file per key, named by the SHA-256 of
 * the key, written to tmp/ and renamed into place (atomic). Source of truth: the files;
 * sizes are indexed in memory at open() to keep the store within its budget, dropping
 * least recently written entries first.
 */
export class DiskKeyValueStore implements KeyValueStore {
  readonly name: string;
  /** By file name, least recently written first. */
  private readonly index: FileLru<{ size: number }>;
  private readonly tmpDir: string;
  private readonly dataDir: string;
  private readonly fs: DiskFs;

  private constructor(private readonly options: DiskKeyValueStoreOptions) {
    this.name = options.name ?? 'disk';
    this.fs = options.fs ?? nodeFs;
    this.tmpDir = join(options.path, 'tmp');
    this.dataDir = join(options.path, 'entries');
    this.index = new FileLru({
      maxBytes: options.maxBytes,
      pathOf: (f) => join(this.dataDir, f),
      fs: this.fs,
    });
  }

  static async open(options: DiskKeyValueStoreOptions): Promise<DiskKeyValueStore> {
    const store = new DiskKeyValueStore(options);
    await fs.rm(store.tmpDir, { recursive: true, force: true });
    await fs.mkdir(store.tmpDir, { recursive: true });
    await fs.mkdir(store.dataDir, { recursive: true });
    const files = await Promise.all(
      (await fs.readdir(store.dataDir)).map(async (f) => ({ f, st: await fs.stat(join(store.dataDir, f)) })),
    );
    files.sort((a, b) => a.st.mtimeMs - b.st.mtimeMs);
    for (const { f, st } of files) store.index.set(f, { size: st.size });
    return store;
  }

  private fileOf(key: string): string {
    return createHash('sha256').update(key).digest('hex');
  }

  async get(key: string, _ctx: StoreContext): Promise<Buffer | undefined> {
    const file = this.fileOf(key);
    if (!this.index.get(file)) return undefined;
    try {
      const content = await fs.readFile(join(this.dataDir, file));
      // The file starts with the key itself, guarding against hash collisions and stray files.
      const keyLen = content.readUInt32BE(0);
      if (content.subarray(4, 4 + keyLen).toString() !== key) return undefined;
      return content.subarray(4 + keyLen);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw toRemexError(err, this.name);
    }
  }

  async delete(key: string, _ctx: StoreContext): Promise<void> {
    const file = this.fileOf(key);
    if (!this.index.get(file)) return;
    try {
      await this.index.remove(file);
    } catch (err) {
      throw toRemexError(err, this.name);
    }
  }

  async put(key: string, value: Buffer, _ctx: StoreContext): Promise<void> {
    const file = this.fileOf(key);
    const header = Buffer.alloc(4);
    const keyBytes = Buffer.from(key);
    header.writeUInt32BE(keyBytes.length);
    const content = Buffer.concat([header, keyBytes, value]);
    const tmp = join(this.tmpDir, randomBytes(12).toString('hex'));
    try {
      await fs.writeFile(tmp, content);
      await this.index.commit(file, tmp, () => ({ size: content.length }));
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw toRemexError(err, this.name);
    }
  }
}
