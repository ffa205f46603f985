import type { ActionCache } from '../actioncache/action-cache.js';
import { carries, pack } from '../common/any.js';
import type { StoreContext } from '../common/store-context.js';
import type { Digest, DigestFunction } from '../common/digest.js';
import { Code, RemexError } from '../common/status.js';
import { Action, ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Any } from '../gen/google/protobuf/any.js';
import type { Job } from './scheduler/job.js';
import type { Outcome } from './scheduler/scheduler.js';

/** The kind of job an REAPI Action is: its payload is the encoded Action. */
export const ACTION_KIND = 'build.bazel.remote.execution.v2.Action';
const ACTION_RESULT = 'build.bazel.remote.execution.v2.ActionResult';

export interface ActionResultsOptions {
  /** Longest a finished action's result may take to reach the action cache. */
  writeTimeoutMs: number;
  /** Called when a result could not be stored; the operation completes all the same. */
  onWriteError?(job: Job, err: unknown): void;
}

/** The merge key of an action: identical cacheable actions in flight are one job. */
export function actionMergeKey(fn: DigestFunction, digest: Digest): string {
  return `${fn.segment}/${digest.hash}/${digest.sizeBytes}`;
}

/** The ActionResult a job's result carries, if it carries one. */
export function actionResultOf(result: Any | undefined): ActionResult | undefined {
  if (!carries(result, ACTION_RESULT)) return undefined;
  return ActionResult.decode(result.value);
}

/**
 * The action cache as remote execution uses it, both ways in one place: looked up before
 * an action is queued (a hit completes the operation at once), written when an action
 * the server ran succeeds.
 */
export class ActionResults {
  constructor(
    private readonly cache: ActionCache,
    private readonly options: ActionResultsOptions,
  ) {}

  /** The cached result of the action, or undefined on a miss (incomplete or corrupt entries are misses). */
  async lookup(
    instance: string,
    fn: DigestFunction,
    digest: Digest,
    ctx: StoreContext,
  ): Promise<Any | undefined> {
    try {
      const result = await this.cache.get(
        instance,
        fn,
        digest,
        { stdout: false, stderr: false, outputFiles: [] },
        ctx,
      );
      return pack(ACTION_RESULT, ActionResult.encode(result).finish());
    } catch (err) {
      if (err instanceof RemexError && err.code === Code.NOT_FOUND) return undefined;
      throw err;
    }
  }

  /**
   * The settle step of action jobs: stamps the queued time on the result (the worker
   * cannot know it) and, for a successful cacheable action, writes the action cache
   * before the operation completes, so a client told COMPLETED finds the entry. A failed
   * write is reported and the operation completes all the same.
   */
  settle = async (job: Job, outcome: Outcome): Promise<Outcome> => {
    const result = actionResultOf(outcome.result);
    if (!result) return outcome;
    if (result.executionMetadata) {
      result.executionMetadata.queuedTimestamp = {
        seconds: Math.floor(job.queuedAt / 1000),
        nanos: (job.queuedAt % 1000) * 1e6,
      };
    }
    if (outcome.status.code === Code.OK && result.exitCode === 0 && !Action.decode(job.payload).doNotCache) {
      try {
        await this.cache.record(job.instance, job.fn, job.digest, result, {
          signal: AbortSignal.timeout(this.options.writeTimeoutMs),
        });
      } catch (err) {
        this.options.onWriteError?.(job, err);
      }
    }
    return { ...outcome, result: pack(ACTION_RESULT, ActionResult.encode(result).finish()) };
  };
}
