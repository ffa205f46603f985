import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { blobStoreContract } from './blob-store.contract.js';
import { DiskBlobStore } from './disk-blob-store.js';
import { MemoryBlobStore } from './memory-blob-store.js';

blobStoreContract('memory', async () => new MemoryBlobStore(64 << 20));
blobStoreContract('disk', async () =>
  DiskBlobStore.open({ path: await mkdtemp(join(tmpdir(), 'remex-disk-')), maxBytes: 64 << 20 }),
);
