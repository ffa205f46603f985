import { randomBytes } from 'node:crypto';
import {
  ContentAddressableStorageService,
  FindMissingBlobsRequest,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { unaryCall } from '../../test/helpers/clients.js';
import { benchClients } from '../lib/clients.js';
import { maxBatchBytes, preEncoded, uploadBlobs } from '../lib/cas.js';
import { drive, percentile, perSecond, seededRandom } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * FindMissingBlobs with a large digest set, half of it stored (uploaded in the setup)
 * and half never stored, shuffled; several callers send the same request back to back.
 * Each answer must name exactly the absent half.
 */
export const findMissing: Scenario = {
  name: 'FindMissingBlobs',
  async run(server, { params }) {
    const p = params.findMissing;
    const presentCount = Math.floor(p.digestsPerRequest / 2);
    const c = benchClients(server.address);
    try {
      const blobs = Array.from({ length: presentCount }, (_, i) => randomBytes(64 + (i % 960)));
      const present = await uploadBlobs(c, blobs, await maxBatchBytes(c));
      const absent: Digest[] = Array.from({ length: p.digestsPerRequest - presentCount }, (_, i) => ({
        hash: randomBytes(32).toString('hex'),
        sizeBytes: 64 + (i % 960),
      }));
      const digests = [...present, ...absent];
      const random = seededRandom(4);
      for (let i = digests.length - 1; i > 0; i--) {
        const j = Math.floor(random() * (i + 1));
        [digests[i], digests[j]] = [digests[j]!, digests[i]!];
      }
      const body = Buffer.from(
        FindMissingBlobsRequest.encode({
          instanceName: '',
          blobDigests: digests,
          digestFunction: 0,
        }).finish(),
      );
      const absentSet = new Set(absent.map((d) => d.hash));
      const method = preEncoded(ContentAddressableStorageService.findMissingBlobs, body);

      const run = await drive(p.requests, p.concurrency, async () => {
        const res = await unaryCall(c.cas, method, undefined);
        if (
          res.missingBlobDigests.length !== absentSet.size ||
          !res.missingBlobDigests.every((d) => absentSet.has(d.hash))
        ) {
          throw new Error(
            `FindMissingBlobs named ${res.missingBlobDigests.length} missing, expected ${absentSet.size}`,
          );
        }
      });
      return {
        findMissingRequestsPerS: perSecond(p.requests, run.wallMs),
        findMissingP50Ms: percentile(run.latencies, 50),
        findMissingP99Ms: percentile(run.latencies, 99),
      };
    } finally {
      c.close();
    }
  },
};
