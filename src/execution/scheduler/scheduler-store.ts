import type { Offer, Property } from '../platform.js';
import type { Job } from './job.js';

/**
 * What the scheduler's store tells the scheduler (on every replica, for a shared store)
 * after a write: never state, only "look again at this".
 */
export type StoreEvent =
  /** The job changed: its watchers re-read it. */
  | { type: 'job'; name: string }
  /** A job of the instance became available for dispatch: idle bots look again. */
  | { type: 'queue'; instance: string }
  /** The bot session changed (a lease cancelled, the session dropped): its poll looks again. */
  | { type: 'session'; name: string };

export interface StoreListener {
  event(e: StoreEvent): void;
  /** Events may have been lost (a shared store's connection was re-made): look at everything again. */
  reconnected(): void;
}

/** A registered bot session (Remote Workers API), one per worker slot. */
export interface BotSession {
  name: string;
  botId: string;
  instance: string;
  offer: Offer;
  expireAt: number;
  /** False while the bot reports itself unhealthy or terminating. */
  acceptsWork: boolean;
}

/** A session as its poll sees it: the session and the one job occupying it, if any. */
export interface SessionState {
  session: BotSession;
  occupant?: Job;
}

/** What the unschedulable sweep needs of a queued job. */
export type QueuedJob = Pick<Job, 'name' | 'instance' | 'platform' | 'unmatchedSince'>;

/**
 * Why a conditional write was refused: the job changed since it was read (its version
 * moved on, or it is gone), or the bot session it would lease to is occupied already.
 */
export type Refusal = 'changed' | 'busy';

/**
 * Where the scheduler keeps its jobs and bot sessions. Two implementations:
 * MemorySchedulerStore (one process: the embedded default) and PgSchedulerStore (several
 * replicas share one PostgreSQL database).
 *
 * A store makes no decisions. The policy (dispatch, merging, retries, cancellation,
 * sweeps) is the Scheduler's, written once above this interface; a store keeps records,
 * performs conditional writes atomically, orders the queue and delivers events. Every
 * write of a job is a compare-and-set on its version, so replicas that race on one job
 * see exactly one of them win and the others re-read.
 *
 * Invariants every store enforces (and the contract suite checks):
 * - at most one job in flight per (instance, mergeKey);
 * - at most one job occupies a bot session (occupiesSession());
 * - events passed with a write are delivered to every subscriber (on every replica) if
 *   and only if the write happened, after it is visible to reads.
 *
 * Queue order ("dispatch order"): the lowest priority value first; within a priority, the
 * job whose invocation was served longest ago (never served = 0; claim() serves one);
 * then the lowest seq. compareDispatch() is that order for stores that sort in process.
 */
export interface SchedulerStore {
  /**
   * Inserts a new job, assigning its seq. If job.mergeKey is set and a job of the same
   * instance with that key is in flight, inserts nothing and returns that job.
   */
  insert(job: Job, events: readonly StoreEvent[]): Promise<{ job: Job; inserted: boolean }>;
  get(name: string): Promise<Job | undefined>;
  /** Every job, in seq order. */
  list(): Promise<Job[]>;
  /**
   * Writes next in place of the stored job if the stored version is still next.version;
   * returns the stored job (version bumped), or why it was refused.
   */
  update(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal>;
  /** update() that also records that next.invocation was served now (fair share): a dispatch. */
  claim(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal>;
  /** Deletes a completed job; false when there is none (unknown, or still in flight). */
  deleteCompleted(name: string): Promise<boolean>;
  /** Deletes jobs completed at or before the time (retention). */
  forgetCompletedBefore(time: number): Promise<void>;
  /**
   * The first queued job of the instance, in dispatch order, that comes after `after` (a
   * job returned earlier in this pass) and whose platform `fits`.
   */
  nextQueued(
    instance: string,
    after: Job | undefined,
    fits: (platform: Property[]) => boolean,
  ): Promise<Job | undefined>;
  /** Every queued job (or those of one instance that have unmatchedSince set). */
  queuedJobs(filter?: { instance: string; unmatched: true }): Promise<QueuedJob[]>;
  /**
   * Sets (a time) or clears (undefined) unmatchedSince of the named jobs that are still
   * queued; setting leaves a job already marked as it is. Bumps their versions.
   */
  setUnmatched(names: readonly string[], since: number | undefined): Promise<void>;

  /** Registers a session; the bot's previous sessions are deleted and returned. */
  createSession(session: BotSession): Promise<BotSession[]>;
  /** Sets the session's expiry and health; undefined when the session is gone. */
  touchSession(name: string, expireAt: number, acceptsWork: boolean): Promise<SessionState | undefined>;
  sessionState(name: string): Promise<SessionState | undefined>;
  /** Every session, or those of one instance. */
  sessions(instance?: string): Promise<BotSession[]>;
  /** Deletes the sessions that expired at or before the time and returns them (each to one caller). */
  expireSessions(time: number): Promise<BotSession[]>;
  /** The jobs occupying any of the named sessions. */
  occupants(sessions: readonly string[]): Promise<Job[]>;
  /** Jobs holding a live lease of a session that no longer exists. */
  orphans(): Promise<Job[]>;

  /** Deleting a session delivers a 'session' event for it; other events come with writes. */
  subscribe(listener: StoreListener): () => void;
  close(): Promise<void>;
}

/** Dispatch order for stores that sort in process; `served` is an invocation's last dispatch number. */
export function compareDispatch(a: Job, b: Job, served: (invocation: string) => number): number {
  if (a.priority !== b.priority) return a.priority - b.priority;
  if (a.invocation !== b.invocation) {
    const d = served(a.invocation) - served(b.invocation);
    if (d !== 0) return d;
  }
  return a.seq - b.seq;
}
