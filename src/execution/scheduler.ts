import type { Digest, DigestFunction } from '../common/digest.js';
import { Code, invalidArgument, notFound } from '../common/status.js';
import type { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { settleResult } from './completion.js';
import { Stage, cachedJob, newJob, operationName, stillRunning, type Job, type JobStatus } from './job.js';
import { matches, unschedulableStatus, type Offer, type PropertyTypes } from './platform.js';
import {
  LeaseState,
  type LeaseReport,
  type LeaseView,
  type SchedulerApi,
  type SessionView,
  type SubmitRequest,
} from './scheduler-api.js';
import type { SchedulerStore } from './scheduler-store.js';

export { LeaseState, type LeaseReport, type LeaseView, type SessionView, type SubmitRequest };

export interface SchedulerOptions {
  now(): number;
  newId(): string;
  store: SchedulerStore;
  /** A bot session not heard from for this long is dropped and its lease requeued. */
  botSessionTimeoutMs: number;
  /** How many times a job may lose its worker before it fails. */
  maxAttempts: number;
  /** A queued job no worker can ever run fails after this long. */
  unschedulableTimeoutMs: number;
  /** Finished operations stay visible (WaitExecution, GetOperation) this long. */
  completedRetentionMs: number;
  /** Called with each successful result before the operation is marked complete (writes the AC). */
  onSuccess?(job: Job, result: ActionResult): Promise<void>;
  /** How each platform property is matched (default: all exact). */
  propertyTypes?: PropertyTypes;
  /** Called when a job loses its worker (session expired, bot re-registered, lease returned). */
  onRequeue?(job: Job, why: string): void;
  /** Called when onSuccess fails; the operation still completes. */
  onError?(job: Job, err: unknown): void;
}

interface Session {
  name: string;
  botId: string;
  instance: string;
  offer: Offer;
  expireAt: number;
  lease?: { id: string; job: Job; state: LeaseState };
  /** Set while the bot long-polls: waking it returns its poll. */
  wake?: () => void;
  /** False while the bot reports itself unhealthy or terminating. */
  acceptsWork: boolean;
  /** A cancelled lease to tell the bot about in its next answer. */
  cancelled?: { id: string; job: Job };
}

/**
 * The scheduler core: a queue of jobs, bot sessions that take them one lease at a
 * time, and watchers of each job. Time and ids are injected so tests are deterministic;
 * timers live outside (the caller runs sweep() periodically).
 *
 * Dispatch order: the lowest priority value first; within a priority, round-robin over
 * tool invocations (the one served longest ago goes next), FIFO within an invocation.
 */
export class Scheduler implements SchedulerApi {
  private readonly queue: Job[] = [];
  private readonly sessions = new Map<string, Session>();
  private readonly sessionsByBot = new Map<string, string>();
  private readonly inflight = new Map<string, string>();
  private readonly watchers = new Map<string, Set<(job: Job) => void>>();
  private readonly lastServed = new Map<string, number>();
  private seq = 0;
  private dispatches = 0;
  private closing = false;

  constructor(private readonly options: SchedulerOptions) {}

  private key(instance: string, fn: DigestFunction, d: Digest): string {
    return `${instance}\0${fn.segment}\0${d.hash}-${d.sizeBytes}`;
  }

  /** Queues an action, or joins the identical cacheable one already in flight. */
  submit(req: SubmitRequest): Job {
    const key = this.key(req.instance, req.fn, req.actionDigest);
    if (!req.doNotCache) {
      const existing = this.inflight.get(key);
      const job = existing ? this.options.store.get(existing) : undefined;
      if (job && job.stage !== Stage.COMPLETED && !job.cancelRequested) {
        // A more urgent duplicate raises the shared job's priority.
        if (req.priority < job.priority) job.priority = req.priority;
        return job;
      }
    }
    const now = this.options.now();
    const job = this.blank(req, now);
    if (!this.anySessionMatches(job)) job.unmatchedSince = now;
    this.options.store.put(job);
    if (!req.doNotCache) this.inflight.set(key, job.name);
    this.queue.push(job);
    this.dispatchToWaitingBots();
    return job;
  }

  /** Records an operation that completed without running (an action cache hit). */
  recordCached(req: SubmitRequest, result: ActionResult): Job {
    const now = this.options.now();
    const job = cachedJob(this.blank(req, now), result, now);
    this.options.store.put(job);
    return job;
  }

  private blank(req: SubmitRequest, now: number): Job {
    return newJob(req, operationName(req.instance, this.options.newId()), now, this.seq++);
  }

  get(name: string): Job | undefined {
    return this.options.store.get(name);
  }

  list(): Job[] {
    return [...this.options.store.all()].sort((a, b) => a.seq - b.seq);
  }

  /** Calls listener on every change of the job; returns the unsubscribe function. */
  watch(name: string, listener: (job: Job) => void): () => void {
    let set = this.watchers.get(name);
    if (!set) this.watchers.set(name, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.watchers.delete(name);
    };
  }

  private notify(job: Job): void {
    for (const listener of [...(this.watchers.get(job.name) ?? [])]) listener(job);
  }

  /** Cancels a queued or running job: it completes as CANCELLED and its worker is told to stop. */
  cancel(name: string): Job {
    const job = this.options.store.get(name);
    if (!job) throw notFound(`operation ${name} does not exist`);
    if (job.stage === Stage.COMPLETED) return job;
    job.cancelRequested = true;
    this.removeFromQueue(job);
    const session = job.botSession ? this.sessions.get(job.botSession) : undefined;
    if (session?.lease?.job === job) {
      session.cancelled = { id: session.lease.id, job };
      session.lease = undefined;
      session.wake?.();
    }
    this.complete(job, undefined, { code: Code.CANCELLED, message: 'the operation was cancelled' });
    return job;
  }

  delete(name: string): void {
    const job = this.options.store.get(name);
    if (!job) throw notFound(`operation ${name} does not exist`);
    // DeleteOperation does not cancel: an operation still in flight is kept running.
    if (job.stage !== Stage.COMPLETED) throw stillRunning(name);
    this.options.store.delete(name);
  }

  // --- bots ---

  createBotSession(instance: string, botId: string, offer: Offer): SessionView {
    if (botId === '') throw invalidArgument('bot_id is required');
    const previous = this.sessionsByBot.get(botId);
    if (previous) this.dropSession(previous, `bot ${botId} registered again`);
    const session: Session = {
      name: `${instance === '' ? '' : `${instance}/`}bots/${this.options.newId()}`,
      botId,
      instance,
      offer,
      expireAt: this.options.now() + this.options.botSessionTimeoutMs,
      acceptsWork: true,
    };
    this.sessions.set(session.name, session);
    this.sessionsByBot.set(botId, session.name);
    // Jobs waiting for a matching worker may now have one.
    for (const job of this.queue)
      if (job.unmatchedSince !== undefined && this.sessionMatches(session, job))
        job.unmatchedSince = undefined;
    this.tryAssign(session);
    return this.view(session);
  }

  /**
   * Takes the bot's report on its lease, then answers with its session: a new lease when
   * one is available, a cancelled one to stop. With nothing to say it waits up to waitMs
   * (long polling) for work or a cancellation.
   */
  async updateBotSession(
    name: string,
    reports: LeaseReport[],
    waitMs: number,
    signal?: AbortSignal,
    acceptsWork = true,
  ): Promise<SessionView> {
    const session = this.sessions.get(name);
    if (!session) throw notFound(`bot session ${name} is unknown or expired; create a new one`);
    session.expireAt = this.options.now() + this.options.botSessionTimeoutMs;
    session.acceptsWork = acceptsWork;
    for (const report of reports) await this.takeReport(session, report);
    // A bot that is unhealthy or terminating gets no new work and is not held.
    if (!acceptsWork) waitMs = 0;
    else if (!session.cancelled) this.tryAssign(session);
    const settled = () => session.cancelled !== undefined || session.lease?.state === LeaseState.PENDING;
    if (!settled() && waitMs > 0 && !signal?.aborted && !this.closing) {
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal?.removeEventListener('abort', done);
          session.wake = undefined;
          resolve();
        };
        const timer = setTimeout(done, waitMs);
        signal?.addEventListener('abort', done, { once: true });
        session.wake = done;
      });
      // Time spent polling counts as contact.
      session.expireAt = this.options.now() + this.options.botSessionTimeoutMs;
    }
    if (!this.sessions.has(name)) throw notFound(`bot session ${name} was replaced or expired while polling`);
    const view = this.view(session);
    session.cancelled = undefined;
    return view;
  }

  private async takeReport(session: Session, report: LeaseReport): Promise<void> {
    const lease = session.lease;
    if (!lease || lease.id !== report.id) return; // stale, or a lease already cancelled
    const job = lease.job;
    if (report.state === LeaseState.ACTIVE && lease.state === LeaseState.PENDING) {
      lease.state = LeaseState.ACTIVE;
      job.stage = Stage.EXECUTING;
      job.startedAt = this.options.now();
      this.options.store.put(job);
      this.notify(job);
    } else if (report.state === LeaseState.COMPLETED) {
      session.lease = undefined;
      await this.finish(job, report.result, report.status ?? { code: Code.OK, message: '' });
    } else if (report.state === LeaseState.CANCELLED) {
      // The bot gave the lease back: run it elsewhere.
      session.lease = undefined;
      this.requeue(job, `worker ${session.botId} returned the lease`);
    }
  }

  private async finish(job: Job, result: ActionResult | undefined, status: JobStatus): Promise<void> {
    if (job.stage === Stage.COMPLETED) return;
    await settleResult(job, result, status, this.options);
    this.complete(job, result, status);
  }

  private complete(job: Job, result: ActionResult | undefined, status: JobStatus): void {
    if (job.stage === Stage.COMPLETED) return;
    job.stage = Stage.COMPLETED;
    job.completedAt = this.options.now();
    job.result = result;
    job.status = status;
    job.leaseId = undefined;
    const key = this.key(job.instance, job.fn, job.actionDigest);
    if (this.inflight.get(key) === job.name) this.inflight.delete(key);
    this.options.store.put(job);
    this.notify(job);
  }

  private requeue(job: Job, why: string): void {
    job.attempts++;
    this.options.onRequeue?.(job, why);
    job.leaseId = undefined;
    job.botSession = undefined;
    if (job.attempts >= this.options.maxAttempts) {
      this.complete(job, undefined, {
        code: Code.UNAVAILABLE,
        message: `the action lost its worker ${job.attempts} times (last: ${why}); giving up`,
      });
      return;
    }
    job.stage = Stage.QUEUED;
    this.options.store.put(job);
    this.queue.push(job);
    this.notify(job);
    this.dispatchToWaitingBots();
  }

  private dropSession(name: string, why: string): void {
    const session = this.sessions.get(name);
    if (!session) return;
    this.sessions.delete(name);
    if (this.sessionsByBot.get(session.botId) === name) this.sessionsByBot.delete(session.botId);
    session.wake?.();
    if (session.lease) this.requeue(session.lease.job, why);
  }

  /** Expires silent bot sessions, fails unschedulable jobs and forgets old operations. */
  sweep(): void {
    const now = this.options.now();
    for (const session of [...this.sessions.values()]) {
      if (session.wake === undefined && session.expireAt <= now) {
        this.dropSession(session.name, `bot session of ${session.botId} expired`);
      }
    }
    for (const job of [...this.queue]) {
      if (this.anySessionMatches(job)) {
        job.unmatchedSince = undefined;
      } else if (job.unmatchedSince === undefined) {
        job.unmatchedSince = now;
      } else if (now - job.unmatchedSince >= this.options.unschedulableTimeoutMs) {
        this.removeFromQueue(job);
        this.complete(job, undefined, this.unschedulableStatus(job));
      }
    }
    for (const job of [...this.options.store.all()]) {
      if (
        job.stage === Stage.COMPLETED &&
        now - (job.completedAt ?? now) >= this.options.completedRetentionMs
      ) {
        this.options.store.delete(job.name);
      }
    }
  }

  private unschedulableStatus(job: Job): JobStatus {
    const offers = [...this.sessions.values()].map((s) => s.offer);
    return unschedulableStatus(job.platform, offers, this.options.propertyTypes);
  }

  private anySessionMatches(job: Job): boolean {
    for (const s of this.sessions.values()) if (this.sessionMatches(s, job)) return true;
    return false;
  }

  private sessionMatches(session: Session, job: Job): boolean {
    return (
      session.instance === job.instance && matches(job.platform, session.offer, this.options.propertyTypes)
    );
  }

  private removeFromQueue(job: Job): void {
    const i = this.queue.indexOf(job);
    if (i >= 0) this.queue.splice(i, 1);
  }

  private dispatchToWaitingBots(): void {
    for (const session of this.sessions.values()) {
      if (session.wake && session.acceptsWork && !session.lease && this.tryAssign(session)) session.wake();
    }
  }

  /** Gives the session the best job it can run, if it has none. */
  private tryAssign(session: Session): boolean {
    if (session.lease) return false;
    let best: Job | undefined;
    for (const job of this.queue) {
      if (!this.sessionMatches(session, job)) continue;
      if (!best || this.before(job, best)) best = job;
    }
    if (!best) return false;
    this.removeFromQueue(best);
    const id = this.options.newId();
    best.leaseId = id;
    best.botSession = session.name;
    session.lease = { id, job: best, state: LeaseState.PENDING };
    this.lastServed.set(best.invocation, ++this.dispatches);
    this.options.store.put(best);
    return true;
  }

  private before(a: Job, b: Job): boolean {
    if (a.priority !== b.priority) return a.priority < b.priority;
    if (a.invocation !== b.invocation) {
      const sa = this.lastServed.get(a.invocation) ?? 0;
      const sb = this.lastServed.get(b.invocation) ?? 0;
      if (sa !== sb) return sa < sb;
    }
    return a.seq < b.seq;
  }

  private view(session: Session): SessionView {
    const leases: LeaseView[] = [];
    if (session.cancelled)
      leases.push({ id: session.cancelled.id, state: LeaseState.CANCELLED, job: session.cancelled.job });
    if (session.lease)
      leases.push({ id: session.lease.id, state: session.lease.state, job: session.lease.job });
    return { name: session.name, botId: session.botId, expireAt: session.expireAt, leases };
  }

  /** Answers every held poll now and holds no more: for a prompt server shutdown. */
  close(): void {
    this.drain();
  }

  drain(): void {
    this.closing = true;
    for (const session of this.sessions.values()) session.wake?.();
  }

  /** Bot sessions currently registered (for tests and metrics). */
  get sessionCount(): number {
    return this.sessions.size;
  }
}
