import { createReadStream, createWriteStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError, notFound, resourceExhausted } from '../common/status.js';
import { digestFunctionBySegment } from '../common/digest.js';
import { describeKey, keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { nodeFs, syncDir, type DiskFs } from '../common/disk-fs.js';
import { FileLru } from '../common/file-lru.js';
import { rangeBounds } from './stream-utils.js';

export interface DiskBlobStoreOptions {
  /** Directory holding cas/ (the blobs) and tmp/ (writes in progress). */
  path: string;
  /** Size budget: least recently used blobs are deleted beyond it. */
  maxBytes: number;
  /**
   * fsync each blob, and the directory entries that name it, before it becomes visible
   * (durable across power loss, slower).
   */
  fsync?: boolean;
  name?: string;
  /** Filesystem calls (tests pause or count them); default node:fs/promises. */
  fs?: DiskFs;
}

interface Entry {
  size: number;
  /** Readers currently streaming the file: a pinned blob is never evicted. */
  pins: number;
  /** Last access (ms); persisted lazily as the file's mtime so LRU order survives restarts. */
  accessed: number;
}

const MTIME_REFRESH_MS = 10 * 60 * 1000;

/**
 * CAS on the local filesystem: one file per blob under cas/<function>/<xx>/<hash>-<size>.
 * Source of truth: the files. The in-memory index is rebuilt from them at open().
 * Writes go to tmp/ and are renamed into place only when complete, so a crash mid-write
 * leaves no partial blob (tmp/ is emptied at the next open()).
 */
export class DiskBlobStore implements BlobStore {
  readonly name: string;
  private readonly index: FileLru<Entry>;
  private readonly casDir: string;
  private readonly tmpDir: string;
  /** Shard directories known to exist (true), or being made. */
  private readonly madeDirs = new Map<string, true | Promise<void>>();
  private readonly fs: DiskFs;

  private constructor(private readonly options: DiskBlobStoreOptions) {
    this.name = options.name ?? 'disk';
    this.fs = options.fs ?? nodeFs;
    this.casDir = join(options.path, 'cas');
    this.tmpDir = join(options.path, 'tmp');
    this.index = new FileLru({
      maxBytes: options.maxBytes,
      pathOf: (k) => this.pathOf(k),
      fs: this.fs,
      syncDirs: options.fsync,
    });
  }

  static async open(options: DiskBlobStoreOptions): Promise<DiskBlobStore> {
    const store = new DiskBlobStore(options);
    await store.load();
    return store;
  }

  get sizeBytes(): number {
    return this.index.sizeBytes;
  }

  private async load(): Promise<void> {
    await fs.rm(this.tmpDir, { recursive: true, force: true });
    await fs.mkdir(this.tmpDir, { recursive: true });
    await fs.mkdir(this.casDir, { recursive: true });
    const found: { key: string; size: number; mtime: number }[] = [];
    for (const fnDir of await fs.readdir(this.casDir)) {
      if (!digestFunctionBySegment(fnDir)) continue;
      const fnPath = join(this.casDir, fnDir);
      for (const shard of await fs.readdir(fnPath)) {
        const shardPath = join(fnPath, shard);
        this.madeDirs.set(shardPath, true);
        for (const file of await fs.readdir(shardPath)) {
          const dash = file.lastIndexOf('-');
          const size = Number(file.slice(dash + 1));
          if (dash < 0 || !Number.isSafeInteger(size)) continue;
          const st = await fs.stat(join(shardPath, file));
          if (st.size !== size) {
            // Not written by us (renames are atomic): drop it rather than serve it.
            await fs.rm(join(shardPath, file), { force: true });
            continue;
          }
          found.push({ key: `${fnDir}/${file}`, size, mtime: st.mtimeMs });
        }
      }
    }
    found.sort((a, b) => a.mtime - b.mtime);
    for (const f of found) this.index.set(f.key, { size: f.size, pins: 0, accessed: f.mtime });
    await this.index.evict();
  }

  private pathOf(k: string): string {
    const slash = k.indexOf('/');
    return join(this.casDir, k.slice(0, slash), k.slice(slash + 1, slash + 3), k.slice(slash + 1));
  }

  private touch(k: string, entry: Entry, now = Date.now()): void {
    this.index.touch(k, entry);
    if (now - entry.accessed > MTIME_REFRESH_MS) {
      const t = new Date(now);
      fs.utimes(this.pathOf(k), t, t).catch(() => undefined);
    }
    entry.accessed = now;
  }

  async get(key: BlobKey, range: ReadRange | undefined, _ctx: StoreContext): Promise<Readable> {
    const k = keyString(key);
    const entry = this.index.get(k);
    if (!entry) throw notFound(`blob ${describeKey(key)} not found`);
    this.touch(k, entry);
    const [start, end] = rangeBounds(entry.size, range);
    entry.pins++;
    let handle: fs.FileHandle;
    try {
      handle = await this.fs.open(this.pathOf(k), 'r');
    } catch (err) {
      entry.pins--;
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        this.index.forget(k);
        throw notFound(`blob ${describeKey(key)} not found (its file is gone)`);
      }
      throw toRemexError(err, this.name);
    }
    if (start >= end) {
      // createReadStream with end < start would read everything; an empty range reads nothing.
      await handle.close();
      entry.pins--;
      return Readable.from([]);
    }
    const stream = createReadStream('', { fd: handle, start, end: end - 1, highWaterMark: 1 << 20 });
    // Unpin once the data is delivered ('end') or the reader gave up ('close').
    let pinned = true;
    const unpin = () => {
      if (pinned) entry.pins--;
      pinned = false;
    };
    stream.once('end', unpin).once('close', unpin);
    return stream;
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    const k = keyString(key);
    this.checkFits(key);
    const tmp = join(this.tmpDir, `${randomBytes(12).toString('hex')}.put`);
    try {
      const out = createWriteStream(tmp, { flags: 'wx', highWaterMark: 1 << 20 });
      await pipeline(data, out, { signal: ctx.signal });
      if (out.bytesWritten !== key.sizeBytes) {
        throw new RemexError(
          Code.INVALID_ARGUMENT,
          `blob ${describeKey(key)} has ${out.bytesWritten} bytes, not ${key.sizeBytes}`,
        );
      }
      await this.commit(k, tmp, key.sizeBytes);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw toRemexError(err, this.name);
    }
  }

  async putFile(key: BlobKey, path: string, _ctx: StoreContext): Promise<void> {
    this.checkFits(key);
    let source = path;
    try {
      try {
        await this.commit(keyString(key), source, key.sizeBytes);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EXDEV') throw err;
        // The file is on another filesystem: copy it into tmp/ first, then rename as usual.
        source = join(this.tmpDir, `${randomBytes(12).toString('hex')}.put`);
        await fs.copyFile(path, source);
        await this.commit(keyString(key), source, key.sizeBytes);
      }
    } catch (err) {
      await fs.rm(source, { force: true });
      throw toRemexError(err, this.name);
    } finally {
      await fs.rm(path, { force: true });
    }
  }

  async findMissing(keys: readonly BlobKey[], _ctx: StoreContext): Promise<BlobKey[]> {
    const missing: BlobKey[] = [];
    const now = Date.now(); // one clock read per call, not per digest
    for (const key of keys) {
      const k = keyString(key);
      const entry = this.index.get(k);
      if (entry) this.touch(k, entry, now);
      else missing.push(key);
    }
    return missing;
  }

  private checkFits(key: BlobKey): void {
    if (key.sizeBytes > this.options.maxBytes) {
      throw resourceExhausted(
        `blob ${describeKey(key)} of ${key.sizeBytes} bytes exceeds the disk store's budget of ${this.options.maxBytes} bytes`,
      );
    }
  }

  private async commit(k: string, file: string, size: number): Promise<void> {
    if (this.options.fsync) {
      const h = await this.fs.open(file, 'r+');
      try {
        await h.sync();
      } finally {
        await h.close();
      }
    }
    const dir = dirname(this.pathOf(k));
    const made = this.madeDirs.get(dir);
    if (made !== true) await (made ?? this.makeDir(dir));
    await this.index.commit(k, file, (existing) => {
      // The new file's mtime is now: the access time follows without a utimes.
      if (!existing) return { size, pins: 0, accessed: Date.now() };
      existing.accessed = Date.now();
      return existing;
    });
  }

  /** Makes a shard directory; with fsync, also the entries of the directories it created. */
  private makeDir(dir: string): Promise<void> {
    const making = (async () => {
      const created = await fs.mkdir(dir, { recursive: true });
      if (this.options.fsync && created !== undefined) {
        // The new directories' names live in their parents: from the shard's parent up to
        // the parent of the first one created. (The shard itself is synced after the rename.)
        const top = dirname(created);
        for (let d = dirname(dir); ; d = dirname(d)) {
          await syncDir(this.fs, d);
          if (d === top || d === dirname(d)) break;
        }
      }
      this.madeDirs.set(dir, true);
    })();
    this.madeDirs.set(dir, making);
    // A failed attempt is forgotten, so that the next write tries again.
    making.catch(() => this.madeDirs.delete(dir));
    return making;
  }
}
