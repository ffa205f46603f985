import type { BlobStore } from '../cas/blob-store.js';
import { DiskBlobStore } from '../cas/disk-blob-store.js';
import { MemoryBlobStore } from '../cas/memory-blob-store.js';
import { DiskKeyValueStore } from '../kv/disk-kv-store.js';
import type { KeyValueStore } from '../kv/kv-store.js';
import { MemoryKeyValueStore } from '../kv/memory-kv-store.js';
import { resolvePath, type BlobStoreConfig, type Config, type KeyValueStoreConfig } from './config.js';

/** Builds a CAS store from its config node; one case per `type` of blobStoreSchema. */
export async function createBlobStore(
  node: BlobStoreConfig,
  config: Config,
  name: string,
): Promise<BlobStore> {
  switch (node.type) {
    case 'memory':
      return new MemoryBlobStore(node.maxSize, name);
    case 'disk':
      return DiskBlobStore.open({
        path: resolvePath(config, node.path),
        maxBytes: node.maxSize,
        fsync: node.fsync,
        name,
      });
  }
}

/** Builds a key-value store (ActionCache, asset index) from its config node. */
export async function createKeyValueStore(
  node: KeyValueStoreConfig,
  config: Config,
  name: string,
): Promise<KeyValueStore> {
  switch (node.type) {
    case 'memory':
      return new MemoryKeyValueStore(node.maxSize, name);
    case 'disk':
      return DiskKeyValueStore.open({ path: resolvePath(config, node.path), maxBytes: node.maxSize, name });
  }
}
