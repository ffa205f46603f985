import { Any } from '../gen/google/protobuf/any.js';
import type { Operation } from '../gen/google/longrunning/operations.js';
import {
  ExecuteOperationMetadata,
  ExecuteResponse,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { Stage, type Job } from './job.js';

const TYPE_PREFIX = 'type.googleapis.com/';

export function pack(typeName: string, value: Uint8Array): Any {
  return { typeUrl: TYPE_PREFIX + typeName, value: Buffer.from(value) };
}

/** The google.longrunning.Operation that describes a job, as Execute and Operations send it. */
export function toOperation(job: Job): Operation {
  const metadata = ExecuteOperationMetadata.fromPartial({
    stage: job.stage as number,
    actionDigest: job.actionDigest,
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
              result: job.result,
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
