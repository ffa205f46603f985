import { createHash, randomBytes } from 'node:crypto';
import { ContentAddressableStorageService } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { unaryCall } from '../../test/helpers/clients.js';
import { benchClients } from '../lib/clients.js';
import {
  digestOf,
  encodeBatchRead,
  encodeBatchUpdate,
  maxBatchBytes,
  packBySize,
  preEncoded,
} from '../lib/cas.js';
import { drive, mbPerSecond, perSecond, seededRandom } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * Many small blobs uploaded with BatchUpdateBlobs and read back with BatchReadBlobs,
 * packed into batches up to the advertised max_batch_total_size_bytes, several batches
 * in flight. Requests are encoded before the clock starts; answers are decoded and
 * checked (status, size, and on reads the SHA-256 of every blob) inside it.
 */
export const smallBlobs: Scenario = {
  name: 'Small blobs',
  async run(server, { params }) {
    const p = params.smallBlobs;
    const random = seededRandom(6);
    const sizes = Array.from({ length: p.count }, () =>
      Math.floor(p.minBytes + random() * (p.maxBytes - p.minBytes + 1)),
    );
    const totalBytes = sizes.reduce((a, b) => a + b, 0);
    const pool = randomBytes(totalBytes);
    const blobs: Buffer[] = [];
    for (let offset = 0, i = 0; i < sizes.length; offset += sizes[i]!, i++) {
      blobs.push(pool.subarray(offset, offset + sizes[i]!));
    }
    const digests = blobs.map(digestOf);

    const c = benchClients(server.address);
    try {
      const max = await maxBatchBytes(c);
      const batches = packBySize(
        blobs.map((_, i) => i),
        (i) => sizes[i]!,
        max,
      );
      const updates = batches.map((b) =>
        encodeBatchUpdate(
          b.map((i) => blobs[i]!),
          b.map((i) => digests[i]!),
        ),
      );
      const update = await drive(updates.length, p.concurrency, async (i) => {
        const res = await unaryCall(
          c.cas,
          preEncoded(ContentAddressableStorageService.batchUpdateBlobs, updates[i]!),
          undefined,
        );
        if (res.responses.length !== batches[i]!.length)
          throw new Error('BatchUpdateBlobs answered the wrong count');
        for (const r of res.responses) {
          if ((r.status?.code ?? 0) !== 0) throw new Error(`BatchUpdateBlobs: ${r.status?.message}`);
        }
      });

      const reads = batches.map((b) => encodeBatchRead(b.map((i) => digests[i]!)));
      const read = await drive(reads.length, p.concurrency, async (i) => {
        const res = await unaryCall(
          c.cas,
          preEncoded(ContentAddressableStorageService.batchReadBlobs, reads[i]!),
          undefined,
        );
        if (res.responses.length !== batches[i]!.length)
          throw new Error('BatchReadBlobs answered the wrong count');
        for (const r of res.responses) {
          if ((r.status?.code ?? 0) !== 0) throw new Error(`BatchReadBlobs: ${r.status?.message}`);
          const hash = createHash('sha256').update(r.data).digest('hex');
          if (r.data.length !== r.digest?.sizeBytes || hash !== r.digest.hash) {
            throw new Error(`BatchReadBlobs returned wrong content for ${r.digest?.hash}`);
          }
        }
      });

      return {
        batchUpdateBlobsPerS: perSecond(p.count, update.wallMs),
        batchUpdateMBps: mbPerSecond(totalBytes, update.wallMs),
        batchReadBlobsPerS: perSecond(p.count, read.wallMs),
        batchReadMBps: mbPerSecond(totalBytes, read.wallMs),
      };
    } finally {
      c.close();
    }
  },
};
