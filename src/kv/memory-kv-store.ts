import type { StoreContext } from '../common/store-context.js';
import type { KeyValueStore } from './kv-store.js';

/** Key-value store in memory, least recently used entries dropped beyond maxBytes. */
export class MemoryKeyValueStore implements KeyValueStore {
  private readonly entries = new Map<string, Buffer>();
  private totalBytes = 0;

  constructor(
    private readonly maxBytes: number,
    readonly name = 'memory',
  ) {}

  async get(key: string, _ctx: StoreContext): Promise<Buffer | undefined> {
    const value = this.entries.get(key);
    if (value !== undefined) {
      this.entries.delete(key);
      this.entries.set(key, value);
    }
    return value;
  }

  async delete(key: string, _ctx: StoreContext): Promise<void> {
    const old = this.entries.get(key);
    if (old === undefined) return;
    this.entries.delete(key);
    this.totalBytes -= old.length + key.length;
  }

  async put(key: string, value: Buffer, _ctx: StoreContext): Promise<void> {
    const old = this.entries.get(key);
    if (old !== undefined) {
      this.entries.delete(key);
      this.totalBytes -= old.length + key.length;
    }
    this.entries.set(key, value);
    this.totalBytes += value.length + key.length;
    for (const [k, v] of this.entries) {
      if (this.totalBytes <= this.maxBytes || k === key) break;
      this.entries.delete(k);
      this.totalBytes -= v.length + k.length;
    }
  }
}
