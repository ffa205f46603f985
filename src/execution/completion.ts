import { Code } from '../common/status.js';
import type { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Job, JobStatus } from './job.js';

export interface CompletionHooks {
  onSuccess?(job: Job, result: ActionResult): Promise<void>;
  onError?(job: Job, err: unknown): void;
}

/**
 * What both schedulers do with a worker's result before the operation completes: stamp
 * the queued time (the worker cannot know it) and, for a successful cacheable action,
 * call onSuccess (which writes the action cache). A failing onSuccess is reported to
 * onError; the operation completes all the same.
 */
export async function settleResult(
  job: Job,
  result: ActionResult | undefined,
  status: JobStatus,
  hooks: CompletionHooks,
): Promise<void> {
  if (result?.executionMetadata) {
    result.executionMetadata.queuedTimestamp = {
      seconds: Math.floor(job.queuedAt / 1000),
      nanos: (job.queuedAt % 1000) * 1e6,
    };
  }
  if (result && status.code === Code.OK && result.exitCode === 0 && !job.doNotCache && hooks.onSuccess) {
    try {
      await hooks.onSuccess(job, result);
    } catch (err) {
      hooks.onError?.(job, err);
    }
  }
}
