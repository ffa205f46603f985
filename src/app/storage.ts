import { ActionCache } from '../actioncache/action-cache.js';
import { AssetIndex } from '../asset/asset-index.js';
import type { BlobStore } from '../cas/blob-store.js';
import { Cas } from '../cas/cas.js';
import { UploadManager } from '../cas/upload-manager.js';
import { uploadsDir, type Config } from '../config/config.js';
import { createBlobStore, createKeyValueStore, SharedResources } from '../config/factory.js';
import type { KeyValueStore } from '../kv/kv-store.js';

/** The storage a process needs for its roles, built from the config. */
export interface Storage {
  cas: Cas;
  /** For the actioncache and execution roles. */
  actionCache?: ActionCache;
  /** For the cas role: ByteStream uploads and the Remote Asset index. */
  uploads?: UploadManager;
  assets?: AssetIndex;
  close(): Promise<void>;
}

/**
 * Opens the stores. Every role reads the CAS (the action cache checks outputs, execution
 * loads actions); in a split deployment each role points at the same shared backends.
 */
export async function openStorage(
  config: Config,
  needs: { actionCache: boolean; cas: boolean },
): Promise<Storage> {
  const shared = new SharedResources();
  const stores: (BlobStore | KeyValueStore)[] = [];
  const opened = <T extends BlobStore | KeyValueStore>(store: T): T => (stores.push(store), store);
  const cas = new Cas(opened(await createBlobStore(config.cas, config, 'cas', shared)), {
    maxBatchTotalSizeBytes: config.maxBatchTotalSizeBytes,
  });
  const actionCache = needs.actionCache
    ? new ActionCache(opened(await createKeyValueStore(config.actionCache, config, 'action-cache')), cas, {
        allowUpdates: config.actionCacheUpdates,
        maxInlineBytes: config.maxInlineBytes,
      })
    : undefined;
  const uploads = needs.cas
    ? await UploadManager.create(cas, {
        spoolDir: uploadsDir(config),
        idleTimeoutMs: config.uploads.idleTimeout,
      })
    : undefined;
  const assets = needs.cas
    ? new AssetIndex(opened(await createKeyValueStore(config.assets, config, 'assets')), cas)
    : undefined;
  return {
    cas,
    actionCache,
    uploads,
    assets,
    async close() {
      await uploads?.close();
      await Promise.all(stores.map((s) => s.close?.()));
      await shared.close();
    },
  };
}
