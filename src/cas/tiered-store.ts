import { callChild, childError } from './child-errors.js';
import { createReadStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { toRemexError } from '../common/error-mapping.js';
import { Code, type RemexError } from '../common/status.js';
import { keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';

/** Buffer of each stream this store pipes between a source and a store or reader. */
const BUFFER_BYTES = 1 << 20;

export interface TieredBlobStoreOptions {
  name?: string;
  /**
   * How far (bytes) a copy into the fast store may fall behind the stream it is fed from
   * before it is given up (default 8 MiB): a slow fast store never holds back a reader or
   * a put, and never makes this store buffer more than that per stream.
   */
  fastSlackBytes?: number;
  /** Told when writing a blob into the fast store failed; such failures never fail a call. */
  onFastError?: (err: RemexError, key: BlobKey) => void;
}

/**
 * A fast store (local disk, memory) in front of a slow one (S3, a shared disk), as
 * NativeLink's FastSlowStore and Buildbarn's ReadCachingBlobAccess do.
 * Source of truth: the slow store. The fast store is a cache of it that may have
 * evicted anything at any time.
 *
 * - put tees the stream into both stores at once, at the pace of the slow store, without
 *   buffering the blob: the fast copy is dropped if it lags more than fastSlackBytes. It
 *   returns once both writes have ended, and succeeds or fails with the slow store; a
 *   fast failure is only reported to onFastError. putFile renames into the slow store
 *   when it can and copies the file into the fast store alongside. When the slow write fails after the fast one completed, the fast store
 *   keeps a blob the slow one lacks; that is harmless for content-addressed, already
 *   verified data, and findMissing (slow only) still reports it missing, so clients
 *   upload it again.
 * - get reads the fast store; on NOT_FOUND it streams the blob from the slow store to
 *   the reader while writing it into the fast store alongside (the reader never waits for
 *   the fast write; a lagging fast write is given up, and so is one whose reader stops
 *   early, so the fast store never gets a partial blob). A ranged read on a fast miss is
 *   served from the slow store as asked, and the whole blob is copied into the fast
 *   store in the background. Fast-store errors other than NOT_FOUND fail the call.
 * - findMissing asks the slow store only: the fast store may hold blobs the slow store
 *   has lost (expired, or a failed slow write above), so its "present" is not exact.
 */
export class TieredBlobStore implements BlobStore {
  readonly name: string;
  private readonly slack: number;
  /** Fast-store writes still running (read-through copies, background copies, put tees). */
  private readonly pending = new Set<Promise<void>>();
  /** Background whole-blob copies by keyString, so concurrent ranged reads start one. */
  private readonly copies = new Map<string, Promise<void>>();
  private readonly closing = new AbortController();

  constructor(
    private readonly fast: BlobStore,
    private readonly slow: BlobStore,
    private readonly options: TieredBlobStoreOptions = {},
  ) {
    this.name = options.name ?? 'tiered';
    this.slack = options.fastSlackBytes ?? 8 << 20;
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    try {
      return await this.fast.get(key, range, ctx);
    } catch (err) {
      if (toRemexError(err).code !== Code.NOT_FOUND) throw childError(err, this.fast.name);
    }
    if ((range?.offset ?? 0) !== 0 || range?.limit) {
      const stream = await callChild(this.slow, () => this.slow.get(key, range, ctx));
      this.copyInBackground(key);
      return stream;
    }
    const source = await callChild(this.slow, () => this.slow.get(key, undefined, ctx));
    const out = new PassThrough({ highWaterMark: BUFFER_BYTES });
    this.feedFast(key, source, out, this.slow.name);
    return out;
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    const toSlow = new PassThrough({ highWaterMark: BUFFER_BYTES });
    const slowDone = this.slow.put(key, toSlow, ctx);
    // A store may fail before it reads its input: close it, so the tee stops feeding it.
    slowDone.catch(() => toSlow.destroy());
    const fastDone = this.feedFast(key, data, toSlow);
    const [slow] = await Promise.allSettled([slowDone, fastDone]);
    if (slow.status === 'rejected') throw childError(slow.reason, this.slow.name);
  }

  /**
   * Renames the file into the slow store when it can, reading it into the fast store from
   * an already open descriptor (which survives the rename); otherwise streams it through put.
   */
  async putFile(key: BlobKey, path: string, ctx: StoreContext): Promise<void> {
    if (!this.slow.putFile) {
      try {
        await this.put(key, createReadStream(path, { highWaterMark: 1 << 20 }), ctx);
      } finally {
        await fs.rm(path, { force: true });
      }
      return;
    }
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(path, 'r');
    } catch (err) {
      await fs.rm(path, { force: true });
      throw toRemexError(err, this.name);
    }
    const stream = handle.createReadStream({ highWaterMark: 1 << 20 });
    let slowFailed = false;
    const fastDone = this.fast
      .put(key, stream, ctx)
      .catch((err: unknown) => {
        if (!slowFailed) this.fastFailed(err, key);
      })
      .finally(() => stream.destroy());
    try {
      await callChild(this.slow, () => this.slow.putFile!(key, path, ctx));
    } catch (err) {
      slowFailed = true;
      stream.destroy(); // the slow store is the truth: do not cache what it refused
      throw err;
    } finally {
      await fastDone;
    }
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    return callChild(this.slow, () => this.slow.findMissing(keys, ctx));
  }

  /** Resolves once every fast-store write started so far has finished (for tests and close). */
  async settled(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  async close(): Promise<void> {
    this.closing.abort();
    await this.settled();
    await Promise.all([this.fast.close?.(), this.slow.close?.()]);
  }

  /**
   * Copies source into primary (the reader, or the slow store's put) with primary's
   * backpressure, and into a put of the fast store as long as it keeps up. Resolves when
   * the fast put has finished, whatever its outcome. Errors of source reach primary
   * prefixed with sourceName when it is a store's stream.
   */
  private feedFast(key: BlobKey, source: Readable, primary: Writable, sourceName?: string): Promise<void> {
    const toFast = new PassThrough({ highWaterMark: BUFFER_BYTES });
    toFast.on('error', () => undefined); // the fast put reports it
    let feeding = true;
    let gaveUp = false;
    const giveUp = (reason: Error) => {
      if (!feeding) return;
      feeding = false;
      gaveUp = true;
      toFast.destroy(reason);
    };
    const done = this.fast
      .put(key, toFast, { signal: this.closing.signal })
      .catch((err: unknown) => {
        if (feeding) {
          feeding = false;
          toFast.destroy();
        }
        if (!gaveUp) this.fastFailed(err, key);
      })
      .finally(() => this.pending.delete(done));
    this.pending.add(done);

    let ended = false;
    source.on('data', (chunk: Buffer) => {
      if (feeding) {
        if (toFast.writableLength + toFast.readableLength > this.slack)
          giveUp(new Error(`fast store fell more than ${this.slack} bytes behind`));
        else toFast.write(chunk);
      }
      if (!primary.destroyed && !primary.write(chunk)) source.pause();
    });
    primary.on('drain', () => source.resume());
    source.once('end', () => {
      ended = true;
      primary.end();
      if (feeding) toFast.end();
    });
    source.once('error', (err) => {
      const e = sourceName === undefined ? err : childError(err, sourceName);
      primary.destroy(e);
      giveUp(e);
    });
    source.once('close', () => {
      if (!ended) giveUp(new Error('source closed early'));
    });
    primary.once('close', () => {
      if (ended) return;
      // The reader went away, or the slow put stopped reading: stop both.
      source.destroy();
      giveUp(new Error('stream abandoned'));
    });
    return done;
  }

  private copyInBackground(key: BlobKey): void {
    const k = keyString(key);
    if (this.copies.has(k) || this.closing.signal.aborted) return;
    const ctx = { signal: this.closing.signal };
    const copy = (async () => {
      const source = await this.slow.get(key, undefined, ctx);
      try {
        await this.fast.put(key, source, ctx);
      } finally {
        source.destroy();
      }
    })()
      .catch((err: unknown) => this.fastFailed(err, key))
      .finally(() => {
        this.copies.delete(k);
        this.pending.delete(copy);
      });
    this.copies.set(k, copy);
    this.pending.add(copy);
  }

  private fastFailed(err: unknown, key: BlobKey): void {
    if (this.closing.signal.aborted) return;
    this.options.onFastError?.(childError(err, this.fast.name), key);
  }
}
