import { pack } from '../common/any.js';
import type { Operation } from '../gen/google/longrunning/operations.js';
import {
  ExecuteOperationMetadata,
  ExecuteResponse,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { actionResultOf } from './action-results.js';
import { Stage, type Job } from './scheduler/job.js';

/** The google.longrunning.Operation that describes a job, as Execute and Operations send it. */
export function toOperation(job: Job): Operation {
  const metadata = ExecuteOperationMetadata.fromPartial({
    stage: job.stage as number,
    actionDigest: job.digest,
    digestFunction: job.fn.value as number,
  });
  const done = job.stage === Stage.COMPLETED;
  return {
    name: job.name,
    metadata: pack(
      'build.bazel.remote.execution.v2.ExecuteOperationMetadata',
      ExecuteOperationMetadata.encode(metadata).finish(),
    ),
    done,
    error: undefined,
    response: done
      ? pack(
          'build.bazel.remote.execution.v2.ExecuteResponse',
          ExecuteResponse.encode(
            ExecuteResponse.fromPartial({
              result: actionResultOf(job.result),
              cachedResult: job.cachedResult,
              status: {
                code: job.status?.code ?? 0,
                message: job.status?.message ?? '',
                details: job.status?.details ?? [],
              },
              message: job.message,
            }),
          ).finish(),
        )
      : undefined,
  };
}
