import pg from 'pg';
import type { BlobStore } from '../cas/blob-store.js';
import { pgConfig } from '../pg/connection.js';
import { DiskBlobStore } from '../cas/disk-blob-store.js';
import { ExistenceCachingBlobStore } from '../cas/existence-caching-store.js';
import { IndexedBlobStore } from '../cas/indexed-store.js';
import { MemoryBlobStore } from '../cas/memory-blob-store.js';
import { MetricsBlobStore } from '../cas/metrics-store.js';
import { PgBlobIndex } from '../cas/pg-blob-index.js';
import { S3BlobStore } from '../cas/s3-blob-store.js';
import { SizePartitioningBlobStore } from '../cas/size-partitioning-store.js';
import { TieredBlobStore } from '../cas/tiered-store.js';
import { DiskKeyValueStore } from '../kv/disk-kv-store.js';
import type { KeyValueStore } from '../kv/kv-store.js';
import { MemoryKeyValueStore } from '../kv/memory-kv-store.js';
import { MetricsKeyValueStore } from '../kv/metrics-kv-store.js';
import { RedisKeyValueStore } from '../kv/redis-kv-store.js';
import { resolvePath, type BlobStoreConfig, type Config, type KeyValueStoreConfig } from './config.js';

/**
 * Connections the stores of one process share: one PostgreSQL pool per URL, however
 * many indexed nodes name it. Closed once, after the stores.
 */
export class SharedResources {
  private readonly pools = new Map<string, pg.Pool>();

  pgPool(url: string, size: number): pg.Pool {
    let pool = this.pools.get(url);
    if (!pool) {
      pool = new pg.Pool(pgConfig(url, { max: size }));
      // An idle client losing its connection must not crash the process; the next query reports it.
      pool.on('error', () => {});
      this.pools.set(url, pool);
    }
    return pool;
  }

  async close(): Promise<void> {
    await Promise.all([...this.pools.values()].map((p) => p.end()));
    this.pools.clear();
  }
}

/**
 * Builds a CAS storage tree from its config node, recursively: one case per `type` of
 * blobStoreSchema. Every node is wrapped in a MetricsBlobStore named by its path in the
 * config ("cas", "cas.large.slow", ...), so each level is measured on its own.
 */
export async function createBlobStore(
  node: BlobStoreConfig,
  config: Config,
  name: string,
  shared: SharedResources = new SharedResources(),
): Promise<BlobStore> {
  return new MetricsBlobStore(await createNode(node, config, name, shared), name);
}

async function createNode(
  node: BlobStoreConfig,
  config: Config,
  name: string,
  shared: SharedResources,
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
    case 's3':
      return new S3BlobStore({
        bucket: node.bucket,
        prefix: node.prefix,
        region: node.region,
        endpoint: node.endpoint,
        forcePathStyle: node.forcePathStyle,
        accessKeyId: node.accessKeyId,
        secretAccessKey: node.secretAccessKey,
        partSize: node.partSize,
        name,
      });
    case 'indexed': {
      const backend = await createBlobStore(node.backend, config, `${name}.backend`, shared);
      const index = await PgBlobIndex.open({
        pool: shared.pgPool(node.index.url, node.index.poolSize),
        // Indexes of different backends share one table: each keeps to its own namespace.
        namespace: indexNamespace(node.backend, name),
        name: `${name}.index`,
      });
      return new IndexedBlobStore(backend, index, { confirmAfterMs: node.confirmAfter, name });
    }
    case 'sizePartitioning':
      return new SizePartitioningBlobStore(
        await createBlobStore(node.small, config, `${name}.small`, shared),
        await createBlobStore(node.large, config, `${name}.large`, shared),
        node.threshold,
        name,
      );
    case 'tiered':
      return new TieredBlobStore(
        await createBlobStore(node.fast, config, `${name}.fast`, shared),
        await createBlobStore(node.slow, config, `${name}.slow`, shared),
        { name },
      );
    case 'existenceCaching':
      return new ExistenceCachingBlobStore(
        await createBlobStore(node.backend, config, `${name}.backend`, shared),
        node.ttl,
        node.maxEntries,
        { name },
      );
  }
}

/** The index namespace of a backend: its bucket and prefix for S3, so every role agrees on it. */
function indexNamespace(backend: BlobStoreConfig, path: string): string {
  if (backend.type === 's3') return `s3:${backend.endpoint ?? 'aws'}/${backend.bucket}/${backend.prefix}`;
  return path;
}

/** Builds a key-value store (ActionCache, asset index) from its config node, measured. */
export async function createKeyValueStore(
  node: KeyValueStoreConfig,
  config: Config,
  name: string,
): Promise<KeyValueStore> {
  return new MetricsKeyValueStore(await createKvNode(node, config, name), name);
}

async function createKvNode(node: KeyValueStoreConfig, config: Config, name: string): Promise<KeyValueStore> {
  switch (node.type) {
    case 'memory':
      return new MemoryKeyValueStore(node.maxSize, name);
    case 'disk':
      return DiskKeyValueStore.open({ path: resolvePath(config, node.path), maxBytes: node.maxSize, name });
    case 'redis':
      return new RedisKeyValueStore({ url: node.url, keyPrefix: node.keyPrefix, ttlMs: node.ttl, name });
  }
}
