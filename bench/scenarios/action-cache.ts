import { randomBytes } from 'node:crypto';
import {
  ActionCacheService,
  ActionResult,
  GetActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { unaryCall } from '../../test/helpers/clients.js';
import { benchClients } from '../lib/clients.js';
import { digestOf, maxBatchBytes, preEncoded, uploadBlobs } from '../lib/cas.js';
import { drive, percentile, perSecond } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * GetActionResult hits: the setup stores results for many actions, each naming two
 * output files and a stdout blob that are in the CAS (so every hit runs the
 * completeness check a real hit does); then many callers ask for them round-robin over
 * one channel. Every answer must be the stored hit.
 */
export const actionCache: Scenario = {
  name: 'ActionCache',
  async run(server, { params }) {
    const p = params.actionCache;
    const c = benchClients(server.address);
    try {
      const outputs = Array.from({ length: p.entries * 3 }, () => randomBytes(256));
      const digests = await uploadBlobs(c, outputs, await maxBatchBytes(c));
      const actions = Array.from({ length: p.entries }, () => digestOf(randomBytes(140)));
      for (let i = 0; i < p.entries; i++) {
        await unaryCall(c.actionCache, ActionCacheService.updateActionResult, {
          instanceName: '',
          actionDigest: actions[i],
          actionResult: ActionResult.fromPartial({
            exitCode: 0,
            outputFiles: [
              { path: 'out/a.o', digest: digests[3 * i], isExecutable: false },
              { path: 'out/b.o', digest: digests[3 * i + 1], isExecutable: false },
            ],
            stdoutDigest: digests[3 * i + 2],
          }),
          resultsCachePolicy: undefined,
          digestFunction: 0,
        });
      }
      const requests = actions.map((actionDigest) =>
        Buffer.from(
          GetActionResultRequest.encode(
            GetActionResultRequest.fromPartial({ instanceName: '', actionDigest }),
          ).finish(),
        ),
      );

      const run = await drive(p.requests, p.concurrency, async (i) => {
        const k = i % p.entries;
        const res = await unaryCall(
          c.actionCache,
          preEncoded(ActionCacheService.getActionResult, requests[k]!),
          undefined,
        );
        if (res.outputFiles.length !== 2 || res.stdoutDigest?.hash !== digests[3 * k + 2]!.hash) {
          throw new Error(`GetActionResult returned a different result for action ${k}`);
        }
      });
      return {
        actionCacheRequestsPerS: perSecond(p.requests, run.wallMs),
        actionCacheP50Ms: percentile(run.latencies, 50),
        actionCacheP99Ms: percentile(run.latencies, 99),
      };
    } finally {
      c.close();
    }
  },
};
