import type { Property } from '../platform.js';
import { Stage, isQueued, occupiesSession, type Job } from './job.js';
import {
  compareDispatch,
  type BotSession,
  type QueuedJob,
  type Refusal,
  type SchedulerStore,
  type SessionState,
  type StoreEvent,
  type StoreListener,
} from './scheduler-store.js';

/**
 * The scheduler's records in this process's memory: the embedded default (one process,
 * nothing survives a restart). Its maps are the source of truth; the indexes beside them
 * (queue per instance, jobs in flight per merge key, occupant per session) are kept in
 * step by every write. Events are delivered in a microtask after the write, as a shared
 * store delivers them after its commit, so the scheduler never sees them mid-call.
 */
export class MemorySchedulerStore implements SchedulerStore {
  private readonly jobs = new Map<string, Job>();
  /** Queued, unleased job names per instance. */
  private readonly queue = new Map<string, Set<string>>();
  /** In-flight job name per instance and merge key. */
  private readonly inflight = new Map<string, string>();
  /** The job occupying each bot session. */
  private readonly occupant = new Map<string, string>();
  private readonly botSessions = new Map<string, BotSession>();
  private readonly sessionByBot = new Map<string, string>();
  /** Fair share: the dispatch number at which each invocation was last served. */
  private readonly served = new Map<string, number>();
  private dispatches = 0;
  private seq = 0;
  private readonly listeners = new Set<StoreListener>();
  private pending: StoreEvent[] = [];

  async insert(job: Job, events: readonly StoreEvent[]): Promise<{ job: Job; inserted: boolean }> {
    if (job.mergeKey !== undefined && job.stage < Stage.COMPLETED) {
      const existing = this.inflight.get(mergeIndex(job.instance, job.mergeKey));
      if (existing !== undefined) return { job: this.jobs.get(existing)!, inserted: false };
    }
    const stored = Object.freeze({ ...job, seq: ++this.seq, version: 0 });
    this.index(undefined, stored);
    this.emit(events);
    return { job: stored, inserted: true };
  }

  async get(name: string): Promise<Job | undefined> {
    return this.jobs.get(name);
  }

  async list(): Promise<Job[]> {
    // Map order is insertion order, which is seq order.
    return [...this.jobs.values()];
  }

  async update(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal> {
    const current = this.jobs.get(next.name);
    if (!current || current.version !== next.version) return 'changed';
    if (occupiesSession(next)) {
      const holder = this.occupant.get(next.botSession!);
      if (holder !== undefined && holder !== next.name) return 'busy';
    }
    const stored = Object.freeze({ ...next, version: next.version + 1 });
    this.index(current, stored);
    this.emit(events);
    return stored;
  }

  async claim(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal> {
    const written = await this.update(next, events);
    if (typeof written !== 'string') this.served.set(next.invocation, ++this.dispatches);
    return written;
  }

  async deleteCompleted(name: string): Promise<boolean> {
    const job = this.jobs.get(name);
    if (!job || job.stage !== Stage.COMPLETED) return false;
    this.index(job, undefined);
    return true;
  }

  async forgetCompletedBefore(time: number): Promise<void> {
    const live = new Set<string>();
    for (const job of this.jobs.values()) {
      if (job.stage === Stage.COMPLETED && (job.completedAt ?? time) <= time) this.index(job, undefined);
      else live.add(job.invocation);
    }
    // Fair-share memory of invocations that have no job left.
    for (const invocation of this.served.keys()) if (!live.has(invocation)) this.served.delete(invocation);
  }

  async nextQueued(
    instance: string,
    after: Job | undefined,
    fits: (platform: Property[]) => boolean,
  ): Promise<Job | undefined> {
    const served = (invocation: string) => this.served.get(invocation) ?? 0;
    let best: Job | undefined;
    for (const name of this.queue.get(instance) ?? []) {
      const job = this.jobs.get(name)!;
      if (after && compareDispatch(job, after, served) <= 0) continue;
      if (best && compareDispatch(job, best, served) >= 0) continue;
      if (fits(job.platform)) best = job;
    }
    return best;
  }

  async queuedJobs(filter?: { instance: string; unmatched: true }): Promise<QueuedJob[]> {
    const names = filter
      ? (this.queue.get(filter.instance) ?? [])
      : [...this.queue.values()].flatMap((s) => [...s]);
    const jobs = [...names].map((n) => this.jobs.get(n)!);
    return filter ? jobs.filter((j) => j.unmatchedSince !== undefined) : jobs;
  }

  async setUnmatched(names: readonly string[], since: number | undefined): Promise<void> {
    for (const name of names) {
      const job = this.jobs.get(name);
      if (!job || !isQueued(job)) continue;
      if (since === undefined ? job.unmatchedSince === undefined : job.unmatchedSince !== undefined) continue;
      const stored = Object.freeze({ ...job, unmatchedSince: since, version: job.version + 1 });
      this.jobs.set(name, stored);
    }
  }

  async createSession(session: BotSession): Promise<BotSession[]> {
    const previous = this.sessionByBot.get(session.botId);
    const replaced = previous === undefined ? [] : [this.botSessions.get(previous)!];
    for (const old of replaced) this.dropSession(old);
    this.botSessions.set(session.name, { ...session });
    this.sessionByBot.set(session.botId, session.name);
    return replaced;
  }

  async touchSession(
    name: string,
    expireAt: number,
    acceptsWork: boolean,
  ): Promise<SessionState | undefined> {
    const session = this.botSessions.get(name);
    if (!session) return undefined;
    session.expireAt = expireAt;
    session.acceptsWork = acceptsWork;
    return this.sessionState(name);
  }

  async sessionState(name: string): Promise<SessionState | undefined> {
    const session = this.botSessions.get(name);
    if (!session) return undefined;
    const holder = this.occupant.get(name);
    return { session: { ...session }, occupant: holder === undefined ? undefined : this.jobs.get(holder) };
  }

  async sessions(instance?: string): Promise<BotSession[]> {
    const all = [...this.botSessions.values()];
    return instance === undefined ? all : all.filter((s) => s.instance === instance);
  }

  async expireSessions(time: number): Promise<BotSession[]> {
    const expired = [...this.botSessions.values()].filter((s) => s.expireAt <= time);
    for (const session of expired) this.dropSession(session);
    return expired;
  }

  async occupants(sessions: readonly string[]): Promise<Job[]> {
    return sessions.flatMap((s) => {
      const holder = this.occupant.get(s);
      return holder === undefined ? [] : [this.jobs.get(holder)!];
    });
  }

  async orphans(): Promise<Job[]> {
    const orphaned: Job[] = [];
    for (const [session, name] of this.occupant) {
      const job = this.jobs.get(name)!;
      if (!this.botSessions.has(session) && job.leaseId !== undefined && job.stage < Stage.COMPLETED)
        orphaned.push(job);
    }
    return orphaned;
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  async close(): Promise<void> {
    this.listeners.clear();
  }

  private dropSession(session: BotSession): void {
    this.botSessions.delete(session.name);
    if (this.sessionByBot.get(session.botId) === session.name) this.sessionByBot.delete(session.botId);
    this.emit([{ type: 'session', name: session.name }]);
  }

  /** Replaces `before` by `after` (either may be absent) in the records and every index. */
  private index(before: Job | undefined, after: Job | undefined): void {
    const job = (after ?? before)!;
    if (after) this.jobs.set(after.name, after);
    else this.jobs.delete(job.name);
    if (isQueued(before) !== isQueued(after)) {
      let names = this.queue.get(job.instance);
      if (!names) this.queue.set(job.instance, (names = new Set()));
      if (isQueued(after)) names.add(job.name);
      else names.delete(job.name);
      if (names.size === 0) this.queue.delete(job.instance);
    }
    if (job.mergeKey !== undefined) {
      const key = mergeIndex(job.instance, job.mergeKey);
      const inFlight = after !== undefined && after.stage < Stage.COMPLETED;
      if (inFlight) this.inflight.set(key, job.name);
      else if (this.inflight.get(key) === job.name) this.inflight.delete(key);
    }
    if (before && occupiesSession(before) && this.occupant.get(before.botSession!) === job.name)
      this.occupant.delete(before.botSession!);
    if (after && occupiesSession(after)) this.occupant.set(after.botSession!, job.name);
  }

  private emit(events: readonly StoreEvent[]): void {
    if (events.length === 0 || this.listeners.size === 0) return;
    if (this.pending.length === 0) queueMicrotask(() => this.deliver());
    this.pending.push(...events);
  }

  private deliver(): void {
    const events = this.pending;
    this.pending = [];
    for (const e of events) for (const listener of this.listeners) listener.event(e);
  }
}

function mergeIndex(instance: string, mergeKey: string): string {
  return `${instance}\0${mergeKey}`;
}
