import type { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Job, JobRequest, JobStatus } from './job.js';
import type { Offer } from './platform.js';

/** google.devtools.remoteworkers.v1test2.LeaseState values. */
export enum LeaseState {
  PENDING = 1,
  ACTIVE = 2,
  COMPLETED = 4,
  CANCELLED = 5,
}

/** What Execute hands the scheduler: the job's identity, payload and policy. */
export type SubmitRequest = JobRequest;

export interface LeaseView {
  id: string;
  state: LeaseState;
  job: Job;
}

export interface LeaseReport {
  id: string;
  state: LeaseState;
  result?: ActionResult;
  status?: JobStatus;
}

export interface SessionView {
  name: string;
  botId: string;
  expireAt: number;
  leases: LeaseView[];
}

export type Awaitable<T> = T | Promise<T>;

/**
 * What the Execution, Operations and Bots services need from a scheduler. Two
 * implementations: Scheduler (in memory, one process: the embedded default) and
 * PgScheduler (PostgreSQL: several replicas share one queue). Callers always await.
 */
export interface SchedulerApi {
  /** Queues an action, or joins the identical cacheable one already in flight. */
  submit(req: SubmitRequest): Awaitable<Job>;
  /** Records an operation that completed without running (an action cache hit). */
  recordCached(req: SubmitRequest, result: ActionResult): Awaitable<Job>;
  get(name: string): Awaitable<Job | undefined>;
  /** Every retained operation, oldest first. */
  list(): Awaitable<Job[]>;
  /**
   * Calls listener with the job after every change of it, wherever the change was made
   * (for PgScheduler: on any replica). Returns the unsubscribe function.
   */
  watch(name: string, listener: (job: Job) => void): () => void;
  /** Cancels a queued or running job: it completes as CANCELLED and its worker is told to stop. */
  cancel(name: string): Awaitable<Job>;
  delete(name: string): Awaitable<void>;
  createBotSession(instance: string, botId: string, offer: Offer): Awaitable<SessionView>;
  /**
   * Takes the bot's report on its lease, then answers with its session: a new lease when
   * one is available, a cancelled one to stop. With nothing to say it waits up to waitMs
   * (long polling) for work or a cancellation.
   */
  updateBotSession(
    name: string,
    reports: LeaseReport[],
    waitMs: number,
    signal?: AbortSignal,
    acceptsWork?: boolean,
  ): Promise<SessionView>;
  /** Expires silent bot sessions, fails unschedulable jobs and forgets old operations. */
  sweep(): Awaitable<void>;
  /**
   * Answers every held poll now and holds no more, still serving calls: the first step
   * of a shutdown, so the server's grace period is not spent in long polls.
   */
  drain(): void;
  /** Releases the scheduler's resources (database connections); calls fail afterwards. */
  close(): Awaitable<void>;
}
