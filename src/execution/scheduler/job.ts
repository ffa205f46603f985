import { failedPrecondition, type RemexError } from '../../common/status.js';
import type { Digest, DigestFunction } from '../../common/digest.js';
import type { Any } from '../../gen/google/protobuf/any.js';
import type { Property } from '../platform.js';

/** REAPI ExecutionStage.Value. */
export enum Stage {
  UNKNOWN = 0,
  CACHE_CHECK = 1,
  QUEUED = 2,
  EXECUTING = 3,
  COMPLETED = 4,
}

/** google.devtools.remoteworkers.v1test2.LeaseState values. */
export enum LeaseState {
  PENDING = 1,
  ACTIVE = 2,
  COMPLETED = 4,
  CANCELLED = 5,
}

export interface JobStatus {
  code: number;
  message: string;
  /** Encoded google.protobuf.Any details (e.g. PreconditionFailure), passed through. */
  details?: { typeUrl: string; value: Buffer }[];
}

/**
 * One unit of work for a worker and the long-running operation that reports on it. The
 * scheduler does not look inside the payload: an REAPI Action is one kind of job, and
 * other kinds (image builds, provisioning signals) are others, dispatched by the same
 * policy. Identical jobs in flight (same instance and mergeKey) share one Job.
 *
 * A Job read from a store is a snapshot: never change it, write a changed copy with
 * SchedulerStore.update (which checks `version`).
 */
export interface Job {
  /** The operation name: "{instance}/operations/{id}" (or "operations/{id}" for ""). */
  name: string;
  instance: string;
  /** The payload's full protobuf type name, e.g. build.bazel.remote.execution.v2.Action. */
  kind: string;
  /** The encoded payload, handed to the worker in its lease as Any(kind, payload). */
  payload: Buffer;
  /** Digest function and digest of the payload (for an action: the action digest). */
  fn: DigestFunction;
  digest: Digest;
  /** Jobs of one instance with the same key in flight are one job; undefined: never merged. */
  mergeKey?: string;
  platform: Property[];
  /** Lower runs sooner (REAPI ExecutionPolicy.priority). */
  priority: number;
  /** RequestMetadata.tool_invocation_id: the unit of fairness. */
  invocation: string;
  /** How long the job may run in ms (Action.timeout), 0 when unlimited. */
  timeoutMs: number;
  stage: Stage;
  /** Submission order (assigned by the store), for FIFO within a priority and invocation. */
  seq: number;
  queuedAt: number;
  startedAt?: number;
  completedAt?: number;
  /** Times a worker took the job and was lost before finishing it. */
  attempts: number;
  /** When no worker could be found that matches (reset when one appears). */
  unmatchedSince?: number;
  /** The lease a bot session holds on the job: set from dispatch until completion or requeue. */
  leaseId?: string;
  leaseState?: LeaseState;
  /** The bot session given the lease; kept after completion while a cancellation is to be told. */
  botSession?: string;
  /** The id of a cancelled lease whose bot has not been told yet. */
  cancelNotice?: string;
  cancelRequested: boolean;
  /** What the worker reported, as it reported it (Any(ActionResult) for an action). */
  result?: Any;
  status?: JobStatus;
  cachedResult: boolean;
  message: string;
  /** Bumped by the store on every write; a write based on an older version is refused. */
  version: number;
}

/** What a submitter decides about a job: its identity, payload and policy. */
export type JobRequest = Pick<
  Job,
  | 'instance'
  | 'kind'
  | 'payload'
  | 'fn'
  | 'digest'
  | 'mergeKey'
  | 'platform'
  | 'priority'
  | 'invocation'
  | 'timeoutMs'
>;

/** A fresh QUEUED job for a request; the store assigns seq and version. */
export function newJob(req: JobRequest, name: string, now: number): Job {
  return {
    name,
    instance: req.instance,
    kind: req.kind,
    payload: req.payload,
    fn: req.fn,
    digest: req.digest,
    mergeKey: req.mergeKey,
    platform: req.platform,
    priority: req.priority,
    invocation: req.invocation,
    timeoutMs: req.timeoutMs,
    stage: Stage.QUEUED,
    seq: 0,
    queuedAt: now,
    attempts: 0,
    cancelRequested: false,
    cachedResult: false,
    message: '',
    version: 0,
  };
}

/** Waiting in the queue for a bot: QUEUED and not leased. */
export function isQueued(job: Job | undefined): boolean {
  return job !== undefined && job.stage === Stage.QUEUED && job.leaseId === undefined;
}

/**
 * Whether the job occupies its bot session: a live lease, or a cancellation the bot has
 * not been told about. A session is occupied by at most one job; both stores enforce it.
 */
export function occupiesSession(job: Job): boolean {
  return (
    job.botSession !== undefined &&
    ((job.leaseId !== undefined && job.stage < Stage.COMPLETED) || job.cancelNotice !== undefined)
  );
}

/** DeleteOperation of an operation in flight: refused, since deleting does not cancel. */
export function stillRunning(name: string): RemexError {
  return failedPrecondition(
    `operation ${name} is still in flight; DeleteOperation does not cancel it: CancelOperation first, or delete it once done`,
  );
}

export function operationName(instance: string, id: string): string {
  return instance === '' ? `operations/${id}` : `${instance}/operations/${id}`;
}
