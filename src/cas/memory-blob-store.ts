import type { Readable } from 'node:stream';
import { Code, RemexError, notFound, resourceExhausted } from '../common/status.js';
import { describeKey, keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { bufferStream, rangeBounds } from './stream-utils.js';

/**
 * In-memory CAS, least recently used blobs evicted when maxBytes is exceeded.
 * Source of truth: this process's memory; nothing survives a restart.
 */
export class MemoryBlobStore implements BlobStore {
  readonly name: string;
  // Map iteration order is insertion order: re-inserting on access makes it an LRU list.
  private readonly blobs = new Map<string, Buffer>();
  private totalBytes = 0;

  constructor(
    private readonly maxBytes: number,
    name = 'memory',
  ) {
    this.name = name;
  }

  get sizeBytes(): number {
    return this.totalBytes;
  }

  async get(key: BlobKey, range: ReadRange | undefined, _ctx: StoreContext): Promise<Readable> {
    const k = keyString(key);
    const blob = this.blobs.get(k);
    if (!blob) throw notFound(`blob ${describeKey(key)} not found`);
    this.blobs.delete(k);
    this.blobs.set(k, blob);
    const [start, end] = rangeBounds(blob.length, range);
    return bufferStream(blob.subarray(start, end));
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    if (key.sizeBytes > this.maxBytes) {
      data.destroy();
      throw resourceExhausted(
        `blob ${describeKey(key)} of ${key.sizeBytes} bytes exceeds the memory store's capacity of ${this.maxBytes} bytes`,
      );
    }
    const chunks: Buffer[] = [];
    let received = 0;
    for await (const chunk of data) {
      ctx.signal?.throwIfAborted();
      received += (chunk as Buffer).length;
      if (received > key.sizeBytes) {
        data.destroy();
        throw new RemexError(Code.INVALID_ARGUMENT, `blob ${describeKey(key)} has more data than its size`);
      }
      chunks.push(chunk as Buffer);
    }
    if (received !== key.sizeBytes) {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `blob ${describeKey(key)} ended after ${received} of ${key.sizeBytes} bytes`,
      );
    }
    this.insert(keyString(key), Buffer.concat(chunks, received));
  }

  async findMissing(keys: readonly BlobKey[], _ctx: StoreContext): Promise<BlobKey[]> {
    const missing: BlobKey[] = [];
    for (const key of keys) {
      const k = keyString(key);
      const blob = this.blobs.get(k);
      if (blob === undefined) {
        missing.push(key);
      } else {
        // Reported present: refresh so it outlives blobs nobody asked about.
        this.blobs.delete(k);
        this.blobs.set(k, blob);
      }
    }
    return missing;
  }

  private insert(k: string, blob: Buffer): void {
    const previous = this.blobs.get(k);
    if (previous) {
      this.blobs.delete(k);
      this.totalBytes -= previous.length;
    }
    this.blobs.set(k, blob);
    this.totalBytes += blob.length;
    for (const [oldKey, old] of this.blobs) {
      if (this.totalBytes <= this.maxBytes) break;
      if (oldKey === k) continue;
      this.blobs.delete(oldKey);
      this.totalBytes -= old.length;
    }
  }
}
