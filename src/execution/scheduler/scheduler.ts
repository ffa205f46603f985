import { Code, aborted, invalidArgument, notFound } from '../../common/status.js';
import type { Any } from '../../gen/google/protobuf/any.js';
import { matches, unschedulableStatus, type Offer, type Property, type PropertyTypes } from '../platform.js';
import {
  LeaseState,
  Stage,
  isQueued,
  newJob,
  operationName,
  stillRunning,
  type Job,
  type JobRequest,
  type JobStatus,
} from './job.js';
import { Polls } from './polls.js';
import type { BotSession, SchedulerStore, SessionState, StoreEvent } from './scheduler-store.js';
import { Watches } from './watches.js';

/** What a worker reports for a lease: its result as it sent it, and a status. */
export interface Outcome {
  result?: Any;
  status: JobStatus;
}

/**
 * What happens to a worker's outcome before a job of one kind completes (for an action:
 * stamp the queued time, write the action cache). It returns the outcome to record. A
 * side effect it can do without (a cache write) should fail quietly; if it throws, the
 * scheduler reports it to onError and records the outcome as reported.
 */
export type Settle = (job: Job, outcome: Outcome) => Promise<Outcome>;

export interface SchedulerOptions {
  store: SchedulerStore;
  now(): number;
  newId(): string;
  /** A bot session not heard from for this long is dropped and its lease requeued. */
  botSessionTimeoutMs: number;
  /** How many times a job may lose its worker before it fails. */
  maxAttempts: number;
  /** A queued job no worker can ever run fails after this long. */
  unschedulableTimeoutMs: number;
  /** Finished operations stay visible (WaitExecution, GetOperation) this long. */
  completedRetentionMs: number;
  /** How each platform property is matched (default: all exact). */
  propertyTypes?: PropertyTypes;
  /** Per job kind, what completion does with the outcome. */
  settle?: Readonly<Record<string, Settle>>;
  /** Called when a job loses its worker (session expired, bot re-registered, lease returned). */
  onRequeue?(job: Job, why: string): void;
  /** Called when a settle step throws; the job still completes. */
  onError?(job: Job, err: unknown): void;
}

export interface LeaseView {
  id: string;
  state: LeaseState;
  job: Job;
}

export interface LeaseReport {
  id: string;
  state: LeaseState;
  result?: Any;
  status?: JobStatus;
}

export interface SessionView {
  name: string;
  botId: string;
  expireAt: number;
  leases: LeaseView[];
}

/** A bot whose candidate was taken by someone else meanwhile looks again this soon. */
const CONTENDED_RETRY_MS = 20;
/** Conditional writes of one job retried this often before the call gives up with ABORTED. */
const MAX_WRITE_ATTEMPTS = 8;

const OK: JobStatus = { code: Code.OK, message: '' };

/**
 * The scheduler: the one place where remex decides what runs where. It keeps a queue of
 * jobs, hands them to bot sessions one lease at a time, and reports every change to the
 * job's watchers. The records live in a SchedulerStore (in memory, or PostgreSQL shared by
 * replicas); every decision is made here, once, whatever the store.
 *
 * - Dispatch order: lowest priority value first; within a priority, round-robin over
 *   tool invocations (the one served longest ago goes next); FIFO within an invocation.
 *   A job goes only to a session of its instance whose offer matches its platform.
 * - Identical jobs in flight (same instance and merge key) are one job; a more urgent
 *   duplicate raises its priority.
 * - A lease lost with its worker (session expired or replaced, lease handed back) is
 *   queued again, up to maxAttempts times; then the job fails UNAVAILABLE.
 * - A queued job no session can run fails FAILED_PRECONDITION after unschedulableTimeoutMs.
 * - Completion runs the kind's settle step (the action cache write) before the job is
 *   marked COMPLETED; finished jobs are forgotten after completedRetentionMs.
 *
 * Every write is a compare-and-set on the job's version (SchedulerStore.update): when
 * two replicas race on one job, one wins and the other re-reads and re-decides. Time and
 * ids are injected so tests are deterministic; sweep() is run periodically by the caller.
 */
export class Scheduler {
  private readonly store: SchedulerStore;
  private readonly polls = new Polls();
  private readonly watches: Watches;
  private readonly running = new Set<Promise<unknown>>();
  private readonly unsubscribe: () => void;
  private closing = false;
  private closed?: Promise<void>;
  /** Orphaned leases the last sweep found (job name and lease id). */
  private orphansSeen = new Set<string>();

  constructor(private readonly options: SchedulerOptions) {
    this.store = options.store;
    this.watches = new Watches((name) => this.store.get(name));
    this.unsubscribe = this.store.subscribe({
      event: (e) => this.onEvent(e),
      reconnected: () => {
        this.polls.pokeAll();
        this.watches.all();
      },
    });
  }

  private onEvent(e: StoreEvent): void {
    if (e.type === 'job') void this.watches.changed(e.name);
    else if (e.type === 'queue') this.polls.pokeInstance(e.instance);
    else this.polls.pokeSession(e.name);
  }

  // --- operations ---

  /** Queues a job, or joins the identical one in flight (raising its priority if more urgent). */
  async submit(req: JobRequest): Promise<Job> {
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS; attempt++) {
      const now = this.options.now();
      const job = newJob(req, operationName(req.instance, this.options.newId()), now);
      if (!(await this.anySessionMatches(job))) job.unmatchedSince = now;
      const { job: stored, inserted } = await this.store.insert(job, [
        { type: 'queue', instance: job.instance },
      ]);
      if (inserted || req.priority >= stored.priority) return stored;
      const raised = await this.change(stored, (j) =>
        j.stage < Stage.COMPLETED && req.priority < j.priority ? { ...j, priority: req.priority } : undefined,
      );
      if (raised) return raised;
      // It completed meanwhile, or was raised by someone else: look again.
    }
    throw aborted(`job ${req.digest.hash}/${req.digest.sizeBytes} is contended; retry`);
  }

  /** Records an operation that completed without running (an action cache hit). */
  async recordCached(req: JobRequest, result: Any): Promise<Job> {
    const now = this.options.now();
    const job: Job = {
      ...newJob(req, operationName(req.instance, this.options.newId()), now),
      stage: Stage.COMPLETED,
      completedAt: now,
      result,
      status: OK,
      cachedResult: true,
    };
    return (await this.store.insert(job, [])).job;
  }

  get(name: string): Promise<Job | undefined> {
    return this.store.get(name);
  }

  /** Every retained operation, oldest first. */
  list(): Promise<Job[]> {
    return this.store.list();
  }

  /**
   * Calls listener with the job after every change of it, wherever the change was made
   * (with a shared store: on any replica). Returns the unsubscribe function.
   */
  watch(name: string, listener: (job: Job) => void): () => void {
    return this.watches.add(name, listener);
  }

  /** Cancels a queued or running job: it completes as CANCELLED and its bot is told to stop. */
  async cancel(name: string): Promise<Job> {
    const job = await this.store.get(name);
    if (!job) throw notFound(`operation ${name} does not exist`);
    const cancelled = await this.change(job, (j) =>
      j.stage === Stage.COMPLETED
        ? undefined
        : {
            ...this.completed(j, undefined, { code: Code.CANCELLED, message: 'the operation was cancelled' }),
            cancelRequested: true,
            // The bot holding the lease hears of it in its next answer, wherever it polls.
            cancelNotice: j.leaseId !== undefined && j.botSession !== undefined ? j.leaseId : undefined,
          },
    );
    return cancelled ?? (await this.store.get(name)) ?? job;
  }

  /** Deletes a finished operation; one in flight is refused, since deleting does not cancel. */
  async delete(name: string): Promise<void> {
    if (await this.store.deleteCompleted(name)) return;
    if (!(await this.store.get(name))) throw notFound(`operation ${name} does not exist`);
    throw stillRunning(name);
  }

  // --- bots ---

  async createBotSession(instance: string, botId: string, offer: Offer): Promise<SessionView> {
    if (botId === '') throw invalidArgument('bot_id is required');
    const session: BotSession = {
      name: `${instance === '' ? '' : `${instance}/`}bots/${this.options.newId()}`,
      botId,
      instance,
      offer,
      expireAt: this.options.now() + this.options.botSessionTimeoutMs,
      acceptsWork: true,
    };
    const replaced = await this.store.createSession(session);
    await this.dropLeases(replaced, () => `bot ${botId} registered again`);
    // Jobs waiting for a matching worker may now have one.
    const waiting = await this.store.queuedJobs({ instance, unmatched: true });
    const nowMatched = waiting.filter((j) => this.fits(j.platform, offer)).map((j) => j.name);
    if (nowMatched.length > 0) await this.store.setUnmatched(nowMatched, undefined);
    const { job } = await this.assign(session);
    return this.view(session, job);
  }

  /**
   * Takes the bot's reports on its lease, then answers with its session: a new lease when
   * one is available, a cancelled one to stop. With nothing to say it waits up to waitMs
   * (long polling) for work or a cancellation, made in this process or on any replica.
   */
  async updateBotSession(
    name: string,
    reports: readonly LeaseReport[],
    waitMs: number,
    signal?: AbortSignal,
    acceptsWork = true,
  ): Promise<SessionView> {
    const call = this.poll(name, reports, acceptsWork ? waitMs : 0, signal, acceptsWork);
    this.running.add(call);
    try {
      return await call;
    } finally {
      this.running.delete(call);
    }
  }

  private async poll(
    name: string,
    reports: readonly LeaseReport[],
    waitMs: number,
    signal: AbortSignal | undefined,
    acceptsWork: boolean,
  ): Promise<SessionView> {
    const timeoutMs = this.options.botSessionTimeoutMs;
    const hold = waitMs > 0 && !signal?.aborted && !this.closing;
    // While the bot is held its session must not expire, whoever sweeps.
    let state = await this.store.touchSession(
      name,
      this.options.now() + timeoutMs + (hold ? waitMs : 0),
      acceptsWork,
    );
    if (!state) throw notFound(`bot session ${name} is unknown or expired; create a new one`);
    const session = state.session;
    for (const report of reports) await this.takeReport(session, state.occupant, report);
    if (reports.length > 0) state = await this.store.sessionState(name);

    const poll = hold ? this.polls.hold(name, session.instance) : undefined;
    let expired = false;
    const wake = () => poll?.poke();
    const timer = poll
      ? setTimeout(() => {
          expired = true;
          wake();
        }, waitMs)
      : undefined;
    signal?.addEventListener('abort', wake, { once: true });
    try {
      for (let first = true; ; first = false) {
        const seen = poll?.pokes ?? 0;
        if (!first) state = await this.store.sessionState(name);
        if (!state) break;
        let contended = false;
        if (acceptsWork && !state.occupant) {
          const assigned = await this.assign(state.session);
          state = { ...state, occupant: assigned.job };
          contended = assigned.contended;
        }
        const occupant = state.occupant;
        const settled =
          occupant !== undefined &&
          (occupant.cancelNotice !== undefined || occupant.leaseState === LeaseState.PENDING);
        if (settled || !poll || expired || signal?.aborted || this.closing) break;
        poll.wantsWork = acceptsWork && !occupant;
        // A job taken by someone else meanwhile may leave others free: look again soon.
        const retry = contended ? setTimeout(wake, CONTENDED_RETRY_MS) : undefined;
        await poll.wait(seen);
        clearTimeout(retry);
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', wake);
      if (poll) this.polls.release(poll);
    }
    if (state && hold) {
      // Time spent polling counts as contact.
      const touched = await this.store.touchSession(name, this.options.now() + timeoutMs, acceptsWork);
      state = touched && { ...touched, occupant: state.occupant };
    }
    if (!state) throw notFound(`bot session ${name} was replaced or expired while polling`);
    const view = this.view(state.session, state.occupant);
    const told = state.occupant?.cancelNotice;
    if (told !== undefined)
      await this.change(state.occupant!, (j) =>
        j.cancelNotice === told ? { ...j, cancelNotice: undefined } : undefined,
      );
    return view;
  }

  private view(session: BotSession, occupant: Job | undefined): SessionView {
    const leases: LeaseView[] = [];
    if (occupant?.cancelNotice !== undefined)
      leases.push({ id: occupant.cancelNotice, state: LeaseState.CANCELLED, job: occupant });
    else if (occupant?.leaseId !== undefined && occupant.stage < Stage.COMPLETED)
      leases.push({ id: occupant.leaseId, state: occupant.leaseState!, job: occupant });
    return { name: session.name, botId: session.botId, expireAt: session.expireAt, leases };
  }

  private async takeReport(
    session: BotSession,
    occupant: Job | undefined,
    report: LeaseReport,
  ): Promise<void> {
    // A report on any other lease is stale (already requeued, cancelled or finished).
    if (!occupant || occupant.leaseId !== report.id || occupant.stage === Stage.COMPLETED) return;
    const ours = (j: Job) =>
      j.leaseId === report.id && j.botSession === session.name && j.stage < Stage.COMPLETED;
    if (report.state === LeaseState.ACTIVE) {
      await this.change(occupant, (j) =>
        ours(j) && j.leaseState === LeaseState.PENDING
          ? { ...j, leaseState: LeaseState.ACTIVE, stage: Stage.EXECUTING, startedAt: this.options.now() }
          : undefined,
      );
    } else if (report.state === LeaseState.COMPLETED) {
      const outcome = await this.settle(occupant, { result: report.result, status: report.status ?? OK });
      await this.change(occupant, (j) =>
        ours(j) ? this.completed(j, outcome.result, outcome.status) : undefined,
      );
    } else if (report.state === LeaseState.CANCELLED) {
      // The bot gave the lease back: run it elsewhere.
      await this.requeue(occupant, `worker ${session.botId} returned the lease`);
    }
  }

  private async settle(job: Job, outcome: Outcome): Promise<Outcome> {
    const settle = this.options.settle?.[job.kind];
    if (!settle) return outcome;
    try {
      return await settle(job, outcome);
    } catch (err) {
      this.options.onError?.(job, err);
      return outcome;
    }
  }

  /** The job completed with this outcome: the fields to write. */
  private completed(job: Job, result: Any | undefined, status: JobStatus): Job {
    return {
      ...job,
      stage: Stage.COMPLETED,
      completedAt: this.options.now(),
      result,
      status,
      leaseId: undefined,
      leaseState: undefined,
    };
  }

  /**
   * The job lost its worker: back to the queue, or failed once it has lost maxAttempts
   * workers. Nothing happens if its lease changed meanwhile (someone else requeued it).
   */
  private async requeue(job: Job, why: string): Promise<void> {
    const lease = job.leaseId;
    const moved = await this.change(job, (j) => {
      if (j.leaseId !== lease || j.stage === Stage.COMPLETED) return undefined;
      const attempts = j.attempts + 1;
      const freed = { ...j, attempts, leaseId: undefined, leaseState: undefined, botSession: undefined };
      if (attempts < this.options.maxAttempts) return { ...freed, stage: Stage.QUEUED };
      return this.completed(freed, undefined, {
        code: Code.UNAVAILABLE,
        message: `the action lost its worker ${attempts} times (last: ${why}); giving up`,
      });
    });
    if (moved) this.options.onRequeue?.(moved, why);
  }

  /** Requeues the leases of sessions just deleted. */
  private async dropLeases(sessions: readonly BotSession[], why: (botId: string) => string): Promise<void> {
    if (sessions.length === 0) return;
    const botOf = new Map(sessions.map((s) => [s.name, s.botId]));
    const held = await this.store.occupants([...botOf.keys()]);
    for (const job of held)
      if (job.leaseId !== undefined && job.stage < Stage.COMPLETED)
        await this.requeue(job, why(botOf.get(job.botSession!)!));
  }

  /**
   * Gives the session the first job in dispatch order it can run. `contended` says a
   * matching job was taken by someone else first (so others may still be free).
   */
  private async assign(session: BotSession): Promise<{ job?: Job; contended: boolean }> {
    if (!session.acceptsWork) return { contended: false };
    const fits = (platform: Property[]) => this.fits(platform, session.offer);
    let contended = false;
    let after: Job | undefined;
    for (;;) {
      const candidate = await this.store.nextQueued(session.instance, after, fits);
      if (!candidate) return { contended };
      const leased: Job = {
        ...candidate,
        leaseId: this.options.newId(),
        leaseState: LeaseState.PENDING,
        botSession: session.name,
      };
      // Nothing a watcher sees changes until the bot reports the lease ACTIVE.
      const taken = await this.store.claim(leased, []);
      if (taken === 'busy') return { contended: false }; // another call of this session leased it a job
      if (taken !== 'changed') return { job: taken, contended };
      contended = true;
      after = candidate;
    }
  }

  private fits(platform: readonly Property[], offer: Offer): boolean {
    return matches(platform, offer, this.options.propertyTypes);
  }

  private async anySessionMatches(job: Job): Promise<boolean> {
    return (await this.store.sessions(job.instance)).some((s) => this.fits(job.platform, s.offer));
  }

  // --- housekeeping ---

  /**
   * Expires silent bot sessions (requeuing their leases), requeues leases left by a
   * session that is gone, fails unschedulable jobs and forgets old operations. Every
   * replica may run it at once: each change is a conditional write, so each is done once.
   */
  async sweep(): Promise<void> {
    const now = this.options.now();
    const expired = await this.store.expireSessions(now);
    await this.dropLeases(expired, (botId) => `bot session of ${botId} expired`);
    await this.requeueOrphans();
    await this.sweepUnschedulable(now);
    await this.store.forgetCompletedBefore(now - this.options.completedRetentionMs);
  }

  /**
   * A replica stopped between deleting a session and requeuing its lease leaves the lease
   * orphaned. A lease is requeued when two sweeps in a row find it so: the replica that is
   * requeuing it right now (a moment after deleting its session) is not raced.
   */
  private async requeueOrphans(): Promise<void> {
    const seen = this.orphansSeen;
    this.orphansSeen = new Set();
    for (const job of await this.store.orphans()) {
      const key = `${job.name}\0${job.leaseId}`;
      if (seen.has(key)) await this.requeue(job, `bot session ${job.botSession} is gone`);
      else this.orphansSeen.add(key);
    }
  }

  /** Queued jobs no session can run are marked; after unschedulableTimeoutMs they fail. */
  private async sweepUnschedulable(now: number): Promise<void> {
    const sessions = await this.store.sessions();
    const matched: string[] = [];
    const unmatched: string[] = [];
    const failing: string[] = [];
    for (const job of await this.store.queuedJobs()) {
      if (sessions.some((s) => s.instance === job.instance && this.fits(job.platform, s.offer))) {
        if (job.unmatchedSince !== undefined) matched.push(job.name);
      } else if (job.unmatchedSince === undefined) {
        unmatched.push(job.name);
      } else if (now - job.unmatchedSince >= this.options.unschedulableTimeoutMs) {
        failing.push(job.name);
      }
    }
    if (matched.length > 0) await this.store.setUnmatched(matched, undefined);
    if (unmatched.length > 0) await this.store.setUnmatched(unmatched, now);
    const cutoff = now - this.options.unschedulableTimeoutMs;
    for (const name of failing) {
      const job = await this.store.get(name);
      if (!job) continue;
      const offers = sessions.filter((s) => s.instance === job.instance).map((s) => s.offer);
      const status = unschedulableStatus(job.platform, offers, this.options.propertyTypes);
      // Only if still unmatched: a bot registering meanwhile clears unmatchedSince.
      await this.change(job, (j) =>
        isQueued(j) && j.unmatchedSince !== undefined && j.unmatchedSince <= cutoff
          ? this.completed(j, undefined, status)
          : undefined,
      );
    }
  }

  /**
   * Writes decide(job) unless it returns undefined, re-reading and re-deciding when the
   * job changed meanwhile. Returns the job written, or undefined when nothing was to be
   * done (or the job is gone).
   */
  private async change(job: Job, decide: (job: Job) => Job | undefined): Promise<Job | undefined> {
    let current: Job | undefined = job;
    for (let attempt = 0; attempt < MAX_WRITE_ATTEMPTS && current; attempt++) {
      const next = decide(current);
      if (!next) return undefined;
      const written = await this.store.update(next, eventsOf(current, next));
      if (written === 'busy') return undefined;
      if (written !== 'changed') return written;
      current = await this.store.get(job.name);
    }
    if (!current) return undefined;
    throw aborted(`operation ${job.name} is contended; retry`);
  }

  /** Answers every held poll now and holds no more, still serving calls: the first step of a shutdown. */
  drain(): void {
    this.closing = true;
    this.polls.pokeAll();
  }

  /** Answers every held poll, waits for calls in progress, then closes the store. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.drain();
      await Promise.allSettled([...this.running]);
      this.unsubscribe();
      await this.store.close();
    })();
    return this.closed;
  }

  /** UpdateBotSession calls held in this process (for tests and metrics). */
  get heldPollCount(): number {
    return this.polls.size;
  }
}

/**
 * What a write from before to after announces: a new stage to the job's watchers, work
 * to the idle bots of its instance, a cancellation to the bot holding the lease.
 */
function eventsOf(before: Job, after: Job): StoreEvent[] {
  const events: StoreEvent[] = [];
  if (after.stage !== before.stage) events.push({ type: 'job', name: after.name });
  if (isQueued(after) && !isQueued(before)) events.push({ type: 'queue', instance: after.instance });
  if (
    after.cancelNotice !== undefined &&
    after.cancelNotice !== before.cancelNotice &&
    after.botSession !== undefined
  )
    events.push({ type: 'session', name: after.botSession });
  return events;
}

export { LeaseState, type SessionState };
