import type { ActionCacheServer } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { resolveDigestFunction } from '../common/digest.js';
import type { Instances } from '../common/instances.js';
import { unary } from '../server/handlers.js';
import type { ActionCache } from './action-cache.js';

const SERVICE = 'ActionCache';

export function actionCacheService(ac: ActionCache, instances: Instances): ActionCacheServer {
  return {
    getActionResult: unary(`${SERVICE}/GetActionResult`, async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.actionDigest?.hash);
      return ac.get(
        req.instanceName,
        fn,
        req.actionDigest,
        { stdout: req.inlineStdout, stderr: req.inlineStderr, outputFiles: req.inlineOutputFiles },
        ctx,
      );
    }),
    updateActionResult: unary(`${SERVICE}/UpdateActionResult`, async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.actionDigest?.hash);
      return ac.update(req.instanceName, fn, req.actionDigest, req.actionResult, ctx);
    }),
  };
}
