import type { ExecutionServer } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Operation } from '../gen/google/longrunning/operations.js';
import { resolveDigestFunction } from '../common/digest.js';
import type { Instances } from '../common/instances.js';
import { serverStreaming } from '../server/handlers.js';
import type { Execution } from './execution.js';
import { toOperation } from './operation.js';

export function executionService(execution: Execution, instances: Instances): ExecutionServer {
  return {
    execute: serverStreaming<Parameters<ExecutionServer['execute']>[0]['request'], Operation>(
      'Execution/Execute',
      async (req, send, ctx) => {
        instances.check(req.instanceName);
        const job = await execution.execute(
          {
            instance: req.instanceName,
            fn: resolveDigestFunction(req.digestFunction, req.actionDigest?.hash),
            actionDigest: req.actionDigest,
            skipCacheLookup: req.skipCacheLookup,
            priority: req.executionPolicy?.priority ?? 0,
            invocation: ctx.requestMetadata?.toolInvocationId || ctx.peer,
          },
          ctx,
        );
        await execution.follow(job.name, (j) => send(toOperation(j)), ctx.signal);
      },
    ),
    waitExecution: serverStreaming<Parameters<ExecutionServer['waitExecution']>[0]['request'], Operation>(
      'Execution/WaitExecution',
      async (req, send, ctx) => {
        await execution.follow(req.name, (j) => send(toOperation(j)), ctx.signal);
      },
    ),
  };
}
