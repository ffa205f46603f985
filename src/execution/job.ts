import { Code, failedPrecondition, type RemexError } from '../common/status.js';
import type { Digest, DigestFunction } from '../common/digest.js';
import type { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Property } from './platform.js';

/** REAPI ExecutionStage.Value. */
export enum Stage {
  UNKNOWN = 0,
  CACHE_CHECK = 1,
  QUEUED = 2,
  EXECUTING = 3,
  COMPLETED = 4,
}

export interface JobStatus {
  code: number;
  message: string;
  /** Encoded google.protobuf.Any details (e.g. PreconditionFailure), passed through. */
  details?: { typeUrl: string; value: Buffer }[];
}

/**
 * One action to run, and the long-running operation that reports on it. Identical
 * cacheable actions submitted while one is in flight share one Job (and its name).
 */
export interface Job {
  /** The operation name: "{instance}/operations/{id}" (or "operations/{id}" for ""). */
  name: string;
  instance: string;
  fn: DigestFunction;
  actionDigest: Digest;
  /** Encoded Action, as the lease payload. */
  action: Buffer;
  platform: Property[];
  /** Lower runs sooner (REAPI ExecutionPolicy.priority). */
  priority: number;
  /** RequestMetadata.tool_invocation_id: the unit of fairness. */
  invocation: string;
  doNotCache: boolean;
  /** Action.timeout in ms, 0 when none. */
  timeoutMs: number;
  stage: Stage;
  /** Submission order, for FIFO within a priority and invocation. */
  seq: number;
  queuedAt: number;
  startedAt?: number;
  completedAt?: number;
  /** Times a worker took the job and was lost before finishing it. */
  attempts: number;
  /** When no worker could be found that matches (reset when one appears). */
  unmatchedSince?: number;
  leaseId?: string;
  botSession?: string;
  cancelRequested: boolean;
  result?: ActionResult;
  status?: JobStatus;
  cachedResult: boolean;
  message: string;
}

/** The fields Execute decides: the job's identity, payload and policy. */
export type JobRequest = Pick<
  Job,
  | 'instance'
  | 'fn'
  | 'actionDigest'
  | 'action'
  | 'platform'
  | 'priority'
  | 'invocation'
  | 'doNotCache'
  | 'timeoutMs'
>;

/** A fresh QUEUED job for a request; seq is the submission order (a store may assign its own). */
export function newJob(req: JobRequest, name: string, now: number, seq: number): Job {
  return {
    name,
    instance: req.instance,
    fn: req.fn,
    actionDigest: req.actionDigest,
    action: req.action,
    platform: req.platform,
    priority: req.priority,
    invocation: req.invocation,
    doNotCache: req.doNotCache,
    timeoutMs: req.timeoutMs,
    stage: Stage.QUEUED,
    seq,
    queuedAt: now,
    attempts: 0,
    cancelRequested: false,
    cachedResult: false,
    message: '',
  };
}

/** DeleteOperation of an operation in flight: refused, since deleting does not cancel. */
export function stillRunning(name: string): RemexError {
  return failedPrecondition(
    `operation ${name} is still in flight; DeleteOperation does not cancel it: CancelOperation first, or delete it once done`,
  );
}

/** A job completed from the action cache, without running. */
export function cachedJob(job: Job, result: ActionResult, now: number): Job {
  return {
    ...job,
    stage: Stage.COMPLETED,
    completedAt: now,
    result,
    status: { code: Code.OK, message: '' },
    cachedResult: true,
  };
}

export function operationName(instance: string, id: string): string {
  return instance === '' ? `operations/${id}` : `${instance}/operations/${id}`;
}
