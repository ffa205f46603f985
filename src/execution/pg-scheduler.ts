import pg from 'pg';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError, aborted, invalidArgument, notFound } from '../common/status.js';
import type { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { pgConfig } from '../pg/connection.js';
import { migrate } from '../pg/migrate.js';
import { Stage, cachedJob, newJob, operationName, stillRunning, type Job, type JobStatus } from './job.js';
import { matches, unschedulableStatus, type Offer, type Property } from './platform.js';
import {
  LeaseState,
  type LeaseReport,
  type LeaseView,
  type SchedulerApi,
  type SessionView,
  type SubmitRequest,
} from './scheduler-api.js';
import type { SchedulerOptions } from './scheduler.js';
import { settleResult } from './completion.js';
import { PgListener } from './pg-scheduler-listener.js';
import { MIGRATIONS } from './pg-scheduler-migrations.js';
import { Polls } from './pg-scheduler-polls.js';
import {
  jobToInsert,
  offerFromRow,
  offerToRow,
  resultToRow,
  rowToJob,
  statusToRow,
  type OperationRow,
  type SessionRow,
} from './pg-scheduler-rows.js';

export type PgSchedulerOptions = Omit<SchedulerOptions, 'store'> & {
  /** postgres://… of the database every replica shares. */
  url: string;
  /** Connections in this replica's pool (default 10); LISTEN takes one more. */
  poolSize?: number;
};

/** NOTIFY channels: payloads name what changed; listeners re-read it from the tables. */
const OPERATION_CHANNEL = 'remex_scheduler_operation';
const QUEUE_CHANNEL = 'remex_scheduler_queue';
const SESSION_CHANNEL = 'remex_scheduler_session';

/** Candidates read per step while looking for a job that matches a bot's offer. */
const CANDIDATE_BATCH = 100;
/** A bot whose candidate was locked by another transaction looks again this soon. */
const CONTENDED_RETRY_MS = 20;

/** Rows of scheduler_operations (alias t) that occupy a bot session: its lease, or a cancellation it has not heard of. */
const occupies = (t: string) =>
  `((${t}.lease_id IS NOT NULL AND ${t}.stage < 4) OR ${t}.cancel_notice_lease IS NOT NULL)`;

interface Session {
  name: string;
  botId: string;
  instance: string;
  offer: Offer;
  expireAt: number;
}

interface Watch {
  listeners: Set<(job: Job) => void>;
  reading: boolean;
  again: boolean;
}

type Db = pg.Pool | pg.PoolClient;

function sessionFromRow(row: SessionRow): Session {
  return {
    name: row.name,
    botId: row.bot_id,
    instance: row.instance,
    offer: offerFromRow(row.offer),
    expireAt: Number(row.expire_at),
  };
}

/**
 * The scheduler of several replicas sharing one PostgreSQL database, which is the source
 * of truth for operations, their leases and bot sessions: any replica may serve any call,
 * and a restarted one carries on from the tables. It behaves as Scheduler does (same
 * dispatch order, merging, retries, messages).
 *
 * Replicas coordinate through row locks (a job is taken with FOR UPDATE SKIP LOCKED, so
 * two bots never get the same one) and LISTEN/NOTIFY: every change of an operation is
 * notified by name, so watch() listeners on any replica re-read it; new work wakes the
 * long polls of that instance, and a change to a session (cancelled lease, replaced,
 * expired) wakes its poll wherever it is held.
 */
export class PgScheduler implements SchedulerApi {
  private readonly watchers = new Map<string, Watch>();
  private readonly polls = new Polls();
  private readonly running = new Set<Promise<unknown>>();
  private listener?: PgListener;
  private closing = false;
  private closed?: Promise<void>;

  private constructor(
    private readonly options: PgSchedulerOptions,
    private readonly pool: pg.Pool,
    /** The migration versions this replica applied at start (none when already up to date). */
    readonly migrationsApplied: readonly number[],
  ) {}

  /** Connects, brings the schema up to date and starts listening for other replicas' changes. */
  static async open(options: PgSchedulerOptions): Promise<PgScheduler> {
    const pool = new pg.Pool(pgConfig(options.url, { max: options.poolSize ?? 10 }));
    // A lost idle connection is dropped from the pool; the next query reconnects or fails.
    pool.on('error', () => {});
    try {
      const applied = await migrate(pool, 'scheduler', MIGRATIONS);
      const scheduler = new PgScheduler(options, pool, applied);
      scheduler.listener = await PgListener.start(
        options.url,
        [OPERATION_CHANNEL, QUEUE_CHANNEL, SESSION_CHANNEL],
        (channel, payload) => scheduler.onNotification(channel, payload),
        () => scheduler.onReconnect(),
      );
      return scheduler;
    } catch (err) {
      await pool.end().catch(() => {});
      throw toRemexError(err, 'scheduler database');
    }
  }

  /** Answers when the database does: for health checks. */
  async ping(): Promise<void> {
    await this.db(() => this.pool.query('SELECT 1'));
  }

  // --- operations ---

  /** Queues an action, or joins the identical cacheable one in flight on any replica. */
  async submit(req: SubmitRequest): Promise<Job> {
    return this.db(async () => {
      for (let attempt = 0; attempt < 5; attempt++) {
        if (!req.doNotCache) {
          const merged = await this.merge(req);
          if (merged) return merged;
        }
        const now = this.options.now();
        const job = this.blank(req, now);
        if (!(await this.anySessionMatches(job))) job.unmatchedSince = now;
        // Conflicts only with an identical action submitted meanwhile: then join that one.
        const inserted = await this.insert(job, true);
        if (inserted) return inserted;
      }
      throw aborted(`action ${req.actionDigest.hash}/${req.actionDigest.sizeBytes} is contended; retry`);
    });
  }

  /** Joins the in-flight operation of the same action, raising its priority if more urgent. */
  private async merge(req: SubmitRequest): Promise<Job | undefined> {
    const { rows } = await this.pool.query<OperationRow>(
      `UPDATE scheduler_operations SET priority = LEAST(priority, $5)
       WHERE instance = $1 AND digest_function = $2 AND action_hash = $3 AND action_size = $4
         AND stage < 4 AND NOT do_not_cache
       RETURNING *`,
      [req.instance, req.fn.segment, req.actionDigest.hash, req.actionDigest.sizeBytes, req.priority],
    );
    return rows[0] && rowToJob(rows[0]);
  }

  /** Records an operation that completed without running (an action cache hit). */
  async recordCached(req: SubmitRequest, result: ActionResult): Promise<Job> {
    return this.db(async () => {
      const now = this.options.now();
      const job = cachedJob(this.blank(req, now), result, now);
      const inserted = await this.insert(job, false);
      if (!inserted) throw new Error(`operation ${job.name} already exists`);
      return inserted;
    });
  }

  private blank(req: SubmitRequest, now: number): Job {
    // seq comes from the table's sequence.
    return newJob(req, operationName(req.instance, this.options.newId()), now, 0);
  }

  /** Inserts the job unless an identical one is in flight; a queued one is announced to the bots. */
  private async insert(job: Job, queued: boolean): Promise<Job | undefined> {
    const { columns, values } = jobToInsert(job);
    const { rows } = await this.pool.query<OperationRow>(
      `WITH ins AS (
         INSERT INTO scheduler_operations (${columns.join(', ')})
         VALUES (${values.map((_, i) => `$${i + 1}`).join(', ')})
         ON CONFLICT (instance, digest_function, action_hash, action_size)
           WHERE stage < 4 AND NOT do_not_cache DO NOTHING
         RETURNING *)
       SELECT ins.*${queued ? `, pg_notify('${QUEUE_CHANNEL}', ins.instance) AS notified` : ''} FROM ins`,
      values,
    );
    return rows[0] && rowToJob(rows[0]);
  }

  async get(name: string): Promise<Job | undefined> {
    return this.db(async () => {
      const row = await one<OperationRow>(this.pool, 'SELECT * FROM scheduler_operations WHERE name = $1', [
        name,
      ]);
      return row && rowToJob(row);
    });
  }

  /** Every retained operation, oldest first. */
  async list(): Promise<Job[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<OperationRow>('SELECT * FROM scheduler_operations ORDER BY seq');
      return rows.map(rowToJob);
    });
  }

  /**
   * Calls listener after every change of the job made on any replica: each notification
   * re-reads the row, one read at a time per job, so listeners never see an older state
   * after a newer one (changes in quick succession may arrive as one).
   */
  watch(name: string, listener: (job: Job) => void): () => void {
    let watch = this.watchers.get(name);
    if (!watch) this.watchers.set(name, (watch = { listeners: new Set(), reading: false, again: false }));
    watch.listeners.add(listener);
    return () => {
      watch.listeners.delete(listener);
      if (watch.listeners.size === 0 && this.watchers.get(name) === watch) this.watchers.delete(name);
    };
  }

  private async refresh(name: string): Promise<void> {
    const watch = this.watchers.get(name);
    if (!watch) return;
    if (watch.reading) {
      watch.again = true;
      return;
    }
    watch.reading = true;
    try {
      do {
        watch.again = false;
        const job = await this.get(name).catch(() => undefined);
        if (job) for (const listener of [...watch.listeners]) listener(job);
      } while (watch.again);
    } finally {
      watch.reading = false;
    }
  }

  private onNotification(channel: string, payload: string): void {
    if (channel === OPERATION_CHANNEL) void this.refresh(payload);
    else if (channel === QUEUE_CHANNEL) this.polls.pokeInstance(payload);
    else if (channel === SESSION_CHANNEL) this.polls.pokeSession(payload);
  }

  /** Notifications sent while the LISTEN connection was down are lost: look at everything again. */
  private onReconnect(): void {
    this.polls.pokeAll();
    for (const name of this.watchers.keys()) void this.refresh(name);
  }

  /** Cancels a queued or running job: it completes as CANCELLED and its worker is told to stop. */
  async cancel(name: string): Promise<Job> {
    return this.db(() =>
      this.tx(async (c) => {
        const row = await one<OperationRow>(
          c,
          'SELECT * FROM scheduler_operations WHERE name = $1 FOR UPDATE',
          [name],
        );
        if (!row) throw notFound(`operation ${name} does not exist`);
        if (row.stage === Stage.COMPLETED) return rowToJob(row);
        // The bot holding the lease hears of it in its next answer, on whichever replica.
        const notice = row.bot_session !== null ? row.lease_id : null;
        const job = await this.complete(
          c,
          name,
          undefined,
          { code: Code.CANCELLED, message: 'the operation was cancelled' },
          notice,
        );
        if (notice !== null) await notify(c, SESSION_CHANNEL, [row.bot_session!]);
        return job ?? rowToJob(row);
      }),
    );
  }

  async delete(name: string): Promise<void> {
    await this.db(async () => {
      // DeleteOperation does not cancel: an operation still in flight is kept running.
      const { rowCount } = await this.pool.query(
        'DELETE FROM scheduler_operations WHERE name = $1 AND stage = 4',
        [name],
      );
      if (rowCount) return;
      const exists = await this.pool.query('SELECT 1 FROM scheduler_operations WHERE name = $1', [name]);
      if (!exists.rowCount) throw notFound(`operation ${name} does not exist`);
      throw stillRunning(name);
    });
  }

  /** Marks the job COMPLETED unless it already is, and notifies its watchers everywhere. */
  private async complete(
    c: Db,
    name: string,
    result: ActionResult | undefined,
    status: JobStatus,
    cancelNotice: string | null = null,
  ): Promise<Job | undefined> {
    const row = await one<OperationRow>(
      c,
      `WITH done AS (
         UPDATE scheduler_operations
         SET stage = 4, completed_at = $2, result = $3, status = $4, lease_id = NULL, lease_state = NULL,
             cancel_requested = cancel_requested OR $5::text IS NOT NULL, cancel_notice_lease = $5
         WHERE name = $1 AND stage < 4
         RETURNING *)
       SELECT done.*, pg_notify('${OPERATION_CHANNEL}', done.name) AS notified FROM done`,
      [name, this.options.now(), resultToRow(result), statusToRow(status), cancelNotice],
    );
    return row && rowToJob(row);
  }

  /**
   * The job lost its worker: back to the queue (announced to the bots), or failed once it
   * has lost maxAttempts workers. The caller holds the row lock.
   */
  private async requeue(c: pg.PoolClient, row: OperationRow, why: string): Promise<void> {
    const attempts = row.attempts + 1;
    const giveUp = attempts >= this.options.maxAttempts;
    const status: JobStatus = {
      code: Code.UNAVAILABLE,
      message: `the action lost its worker ${attempts} times (last: ${why}); giving up`,
    };
    const moved = await one<OperationRow>(
      c,
      `WITH moved AS (
         UPDATE scheduler_operations
         SET attempts = $2, lease_id = NULL, lease_state = NULL, bot_session = NULL,
             stage = CASE WHEN $3::boolean THEN 4 ELSE 2 END,
             completed_at = CASE WHEN $3::boolean THEN $4::bigint ELSE completed_at END,
             status = CASE WHEN $3::boolean THEN $5::jsonb ELSE status END
         WHERE name = $1 AND lease_id = $6 AND stage < 4
         RETURNING *)
       SELECT moved.*, pg_notify('${OPERATION_CHANNEL}', moved.name) AS notified,
              CASE WHEN moved.stage = 2 THEN pg_notify('${QUEUE_CHANNEL}', moved.instance) END AS queued
       FROM moved`,
      [row.name, attempts, giveUp, this.options.now(), JSON.stringify(statusToRow(status)), row.lease_id],
    );
    if (moved) this.options.onRequeue?.(rowToJob(moved), why);
  }

  // --- bots ---

  async createBotSession(instance: string, botId: string, offer: Offer): Promise<SessionView> {
    if (botId === '') throw invalidArgument('bot_id is required');
    return this.db(async () => {
      const session: Session = {
        name: `${instance === '' ? '' : `${instance}/`}bots/${this.options.newId()}`,
        botId,
        instance,
        offer,
        expireAt: this.options.now() + this.options.botSessionTimeoutMs,
      };
      await this.tx(async (c) => {
        // Registrations of one bot on several replicas take turns.
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`remex-bot:${botId}`]);
        const { rows } = await c.query<{ name: string; bot_id: string }>(
          'DELETE FROM scheduler_bot_sessions WHERE bot_id = $1 RETURNING name, bot_id',
          [botId],
        );
        await this.dropLeases(c, rows, () => `bot ${botId} registered again`);
        await c.query(
          `INSERT INTO scheduler_bot_sessions (name, bot_id, instance, offer, expire_at)
           VALUES ($1, $2, $3, $4, $5)`,
          [session.name, botId, instance, offerToRow(offer), session.expireAt],
        );
      });
      await this.clearUnmatched(session);
      const { job } = await this.tryAssign(session);
      const leases = job ? [{ id: job.leaseId!, state: LeaseState.PENDING, job }] : [];
      return { name: session.name, botId, expireAt: session.expireAt, leases };
    });
  }

  /** Requeues the leases of sessions just deleted, and wakes their polls to answer NOT_FOUND. */
  private async dropLeases(
    c: pg.PoolClient,
    sessions: { name: string; bot_id: string }[],
    why: (botId: string) => string,
  ): Promise<void> {
    if (sessions.length === 0) return;
    await notify(
      c,
      SESSION_CHANNEL,
      sessions.map((s) => s.name),
    );
    const botOf = new Map(sessions.map((s) => [s.name, s.bot_id]));
    const { rows } = await c.query<OperationRow>(
      `SELECT * FROM scheduler_operations
       WHERE bot_session = ANY($1) AND lease_id IS NOT NULL AND stage < 4 FOR UPDATE`,
      [[...botOf.keys()]],
    );
    for (const row of rows) await this.requeue(c, row, why(botOf.get(row.bot_session!)!));
  }

  /** Jobs waiting for a matching worker may now have one. */
  private async clearUnmatched(session: Session): Promise<void> {
    const { rows } = await this.pool.query<{ name: string; platform: Property[] }>(
      `SELECT name, platform FROM scheduler_operations
       WHERE instance = $1 AND stage = 2 AND lease_id IS NULL AND unmatched_since IS NOT NULL`,
      [session.instance],
    );
    const names = rows.filter((r) => this.fits(r.platform, session.offer)).map((r) => r.name);
    if (names.length > 0)
      await this.pool.query('UPDATE scheduler_operations SET unmatched_since = NULL WHERE name = ANY($1)', [
        names,
      ]);
  }

  /**
   * Takes the bot's report on its lease, then answers with its session: a new lease when
   * one is available, a cancelled one to stop. With nothing to say it waits up to waitMs
   * (long polling) for work or a cancellation made on any replica.
   */
  async updateBotSession(
    name: string,
    reports: LeaseReport[],
    waitMs: number,
    signal?: AbortSignal,
    acceptsWork = true,
  ): Promise<SessionView> {
    const call = this.db(() => this.poll(name, reports, acceptsWork ? waitMs : 0, signal, acceptsWork));
    this.running.add(call);
    try {
      return await call;
    } finally {
      this.running.delete(call);
    }
  }

  private async poll(
    name: string,
    reports: LeaseReport[],
    waitMs: number,
    signal: AbortSignal | undefined,
    acceptsWork: boolean,
  ): Promise<SessionView> {
    const timeoutMs = this.options.botSessionTimeoutMs;
    const hold = waitMs > 0 && !signal?.aborted && !this.closing;
    // While the bot is held its session must not expire, whichever replica sweeps.
    const row = await this.touch(name, this.options.now() + timeoutMs + (hold ? waitMs : 0), acceptsWork);
    if (!row) throw notFound(`bot session ${name} is unknown or expired; create a new one`);
    const session = sessionFromRow(row);
    for (const report of reports) await this.takeReport(session, report);

    const poll = hold ? this.polls.hold(name, session.instance) : undefined;
    if (poll) poll.wantsWork = acceptsWork;
    let expired = false;
    const wake = () => poll?.poke();
    const timer = poll
      ? setTimeout(() => {
          expired = true;
          wake();
        }, waitMs)
      : undefined;
    signal?.addEventListener('abort', wake, { once: true });
    let leases: LeaseView[] | undefined;
    try {
      for (;;) {
        const seen = poll?.pokes ?? 0;
        leases = await this.leasesOf(name);
        if (!leases) break;
        let contended = false;
        if (acceptsWork && leases.length === 0) {
          const assigned = await this.tryAssign(session);
          if (assigned.job)
            leases = [{ id: assigned.job.leaseId!, state: LeaseState.PENDING, job: assigned.job }];
          contended = assigned.contended;
        }
        const settled = leases.some(
          (l) => l.state === LeaseState.CANCELLED || l.state === LeaseState.PENDING,
        );
        if (settled || !poll || expired || signal?.aborted || this.closing) break;
        poll.wantsWork = acceptsWork && leases.length === 0;
        // A job locked by another transaction may still be free: look again soon.
        const retry = contended ? setTimeout(wake, CONTENDED_RETRY_MS) : undefined;
        await poll.wait(seen);
        clearTimeout(retry);
      }
    } finally {
      clearTimeout(timer);
      signal?.removeEventListener('abort', wake);
      if (poll) this.polls.release(poll);
    }
    if (leases && hold) {
      // Time spent polling counts as contact.
      const touched = await this.touch(name, this.options.now() + timeoutMs, acceptsWork);
      if (touched) session.expireAt = Number(touched.expire_at);
      else leases = undefined;
    }
    if (!leases) throw notFound(`bot session ${name} was replaced or expired while polling`);
    const told = leases.filter((l) => l.state === LeaseState.CANCELLED).map((l) => l.id);
    if (told.length > 0)
      await this.pool.query(
        `UPDATE scheduler_operations SET cancel_notice_lease = NULL
         WHERE bot_session = $1 AND cancel_notice_lease = ANY($2)`,
        [name, told],
      );
    return { name, botId: session.botId, expireAt: session.expireAt, leases };
  }

  private async touch(name: string, expireAt: number, acceptsWork: boolean): Promise<SessionRow | undefined> {
    return one<SessionRow>(
      this.pool,
      `UPDATE scheduler_bot_sessions SET expire_at = $2, accepts_work = $3 WHERE name = $1 RETURNING *`,
      [name, expireAt, acceptsWork],
    );
  }

  /** The session's cancelled lease (first) and current lease; undefined when the session is gone. */
  private async leasesOf(name: string): Promise<LeaseView[] | undefined> {
    const { rows } = await this.pool.query<OperationRow & { session: string }>(
      `SELECT s.name AS session, j.* FROM scheduler_bot_sessions s
       LEFT JOIN scheduler_operations j ON j.bot_session = s.name AND ${occupies('j')}
       WHERE s.name = $1`,
      [name],
    );
    if (rows.length === 0) return undefined;
    const leases: LeaseView[] = [];
    for (const row of rows) {
      if (row.name === null) continue;
      if (row.cancel_notice_lease !== null)
        leases.unshift({ id: row.cancel_notice_lease, state: LeaseState.CANCELLED, job: rowToJob(row) });
      else if (row.lease_id !== null)
        leases.push({ id: row.lease_id, state: row.lease_state as LeaseState, job: rowToJob(row) });
    }
    return leases;
  }

  private async takeReport(session: Session, report: LeaseReport): Promise<void> {
    if (report.state === LeaseState.ACTIVE) {
      await this.pool.query(
        `WITH started AS (
           UPDATE scheduler_operations SET lease_state = 2, stage = 3, started_at = $3
           WHERE bot_session = $1 AND lease_id = $2 AND stage < 4 AND lease_state = 1
           RETURNING name)
         SELECT pg_notify('${OPERATION_CHANNEL}', name) FROM started`,
        [session.name, report.id, this.options.now()],
      );
    } else if (report.state === LeaseState.COMPLETED) {
      await this.finish(session, report);
    } else if (report.state === LeaseState.CANCELLED) {
      // The bot gave the lease back: run it elsewhere.
      await this.tx(async (c) => {
        const row = await this.lockLease(c, session, report.id);
        if (row) await this.requeue(c, row, `worker ${session.botId} returned the lease`);
      });
    }
  }

  /** The session's lease with this id, locked; undefined when stale or already cancelled. */
  private lockLease(c: pg.PoolClient, session: Session, leaseId: string): Promise<OperationRow | undefined> {
    return one<OperationRow>(
      c,
      `SELECT * FROM scheduler_operations
       WHERE bot_session = $1 AND lease_id = $2 AND stage < 4 FOR UPDATE`,
      [session.name, leaseId],
    );
  }

  /**
   * Completes the job of a reported lease. The row stays locked while onSuccess writes the
   * action cache, so of two replicas given the same report only one calls it.
   */
  private async finish(session: Session, report: LeaseReport): Promise<void> {
    await this.tx(async (c) => {
      const row = await this.lockLease(c, session, report.id);
      if (!row) return;
      const job = rowToJob(row);
      const result = report.result;
      const status = report.status ?? { code: Code.OK, message: '' };
      await settleResult(job, result, status, this.options);
      await this.complete(c, job.name, result, status);
    });
  }

  /**
   * Gives the session the best job it can run, if it has none: candidates are read in
   * dispatch order (priority, then the invocation served longest ago, then FIFO), matched
   * against the offer here, and the first match is taken with FOR UPDATE SKIP LOCKED.
   * Only the taken row is locked, so bots polling at once never hide other jobs from each
   * other. `contended` says a matching job was skipped because another transaction held it.
   */
  private async tryAssign(session: Session): Promise<{ job?: Job; contended: boolean }> {
    return this.tx(async (c) => {
      let contended = false;
      // The session row lock makes assignments to one session take turns.
      const s = await one<{ accepts_work: boolean }>(
        c,
        'SELECT accepts_work FROM scheduler_bot_sessions WHERE name = $1 FOR UPDATE',
        [session.name],
      );
      if (!s?.accepts_work) return { contended };
      const busy = await c.query(
        `SELECT 1 FROM scheduler_operations j WHERE j.bot_session = $1 AND ${occupies('j')} LIMIT 1`,
        [session.name],
      );
      if (busy.rowCount) return { contended };
      // Pages continue after the last row seen (keyset), not at an offset: rows other bots
      // take meanwhile would shift an offset and skip a candidate.
      let after: [number, string, string] | undefined;
      for (;;) {
        const { rows } = await c.query<{
          name: string;
          platform: Property[];
          priority: number;
          served: string;
          seq: string;
        }>(
          `SELECT j.name, j.platform, j.priority, COALESCE(i.last_served, 0) AS served, j.seq
           FROM scheduler_operations j
           LEFT JOIN scheduler_invocations i ON i.invocation = j.invocation
           WHERE j.instance = $1 AND j.stage = 2 AND j.lease_id IS NULL
             AND ($3::integer IS NULL OR (j.priority, COALESCE(i.last_served, 0), j.seq) > ($3, $4::bigint, $5::bigint))
           ORDER BY j.priority, COALESCE(i.last_served, 0), j.seq
           LIMIT $2`,
          [session.instance, CANDIDATE_BATCH, after?.[0] ?? null, after?.[1] ?? null, after?.[2] ?? null],
        );
        const last = rows.at(-1);
        if (last) after = [last.priority, last.served, last.seq];
        for (const candidate of rows) {
          if (!this.fits(candidate.platform, session.offer)) continue;
          const taken = await one<OperationRow>(
            c,
            `UPDATE scheduler_operations SET lease_id = $2, lease_state = 1, bot_session = $3
             WHERE name = (SELECT name FROM scheduler_operations
                           WHERE name = $1 AND stage = 2 AND lease_id IS NULL
                           FOR UPDATE SKIP LOCKED)
             RETURNING *`,
            [candidate.name, this.options.newId(), session.name],
          );
          if (!taken) {
            contended = true;
            continue;
          }
          await c.query(
            `INSERT INTO scheduler_invocations (invocation, last_served)
             VALUES ($1, nextval('scheduler_dispatches'))
             ON CONFLICT (invocation) DO UPDATE SET last_served = excluded.last_served`,
            [taken.invocation],
          );
          return { job: rowToJob(taken), contended };
        }
        if (rows.length < CANDIDATE_BATCH) return { contended };
      }
    });
  }

  private fits(platform: readonly Property[], offer: Offer): boolean {
    return matches(platform, offer, this.options.propertyTypes);
  }

  private async anySessionMatches(job: Job): Promise<boolean> {
    const { rows } = await this.pool.query<Pick<SessionRow, 'offer'>>(
      'SELECT offer FROM scheduler_bot_sessions WHERE instance = $1',
      [job.instance],
    );
    return rows.some((r) => this.fits(job.platform, offerFromRow(r.offer)));
  }

  // --- housekeeping ---

  /**
   * Expires silent bot sessions, fails unschedulable jobs and forgets old operations.
   * Every replica may run it at once: each change is a conditional UPDATE or DELETE, and
   * sessions are claimed with SKIP LOCKED, so each is done once.
   */
  async sweep(): Promise<void> {
    await this.db(async () => {
      const now = this.options.now();
      await this.tx(async (c) => {
        const { rows } = await c.query<{ name: string; bot_id: string }>(
          `DELETE FROM scheduler_bot_sessions WHERE name IN (
             SELECT name FROM scheduler_bot_sessions WHERE expire_at <= $1 FOR UPDATE SKIP LOCKED)
           RETURNING name, bot_id`,
          [now],
        );
        await this.dropLeases(c, rows, (botId) => `bot session of ${botId} expired`);
      });
      await this.sweepUnschedulable(now);
      await this.pool.query('DELETE FROM scheduler_operations WHERE stage = 4 AND completed_at <= $1', [
        now - this.options.completedRetentionMs,
      ]);
      // Fair-share memory of invocations that have no operation left.
      await this.pool.query(
        `DELETE FROM scheduler_invocations i
         WHERE NOT EXISTS (SELECT 1 FROM scheduler_operations j WHERE j.invocation = i.invocation)`,
      );
    });
  }

  /** Queued jobs no session can run are marked; after unschedulableTimeoutMs they fail. */
  private async sweepUnschedulable(now: number): Promise<void> {
    const sessions = (
      await this.pool.query<Pick<SessionRow, 'instance' | 'offer'>>(
        'SELECT instance, offer FROM scheduler_bot_sessions',
      )
    ).rows.map((r) => ({ instance: r.instance, offer: offerFromRow(r.offer) }));
    const { rows } = await this.pool.query<
      Pick<OperationRow, 'name' | 'instance' | 'platform' | 'unmatched_since'>
    >(
      `SELECT name, instance, platform, unmatched_since FROM scheduler_operations
       WHERE stage = 2 AND lease_id IS NULL`,
    );
    const matched: string[] = [];
    const unmatched: string[] = [];
    const failed: { name: string; status: JobStatus }[] = [];
    for (const job of rows) {
      if (sessions.some((s) => s.instance === job.instance && this.fits(job.platform, s.offer))) {
        if (job.unmatched_since !== null) matched.push(job.name);
      } else if (job.unmatched_since === null) {
        unmatched.push(job.name);
      } else if (now - Number(job.unmatched_since) >= this.options.unschedulableTimeoutMs) {
        failed.push({ name: job.name, status: this.unschedulableStatus(job.platform, sessions) });
      }
    }
    if (matched.length > 0)
      await this.pool.query(
        'UPDATE scheduler_operations SET unmatched_since = NULL WHERE name = ANY($1) AND stage = 2',
        [matched],
      );
    if (unmatched.length > 0)
      await this.pool.query(
        `UPDATE scheduler_operations SET unmatched_since = $2
         WHERE name = ANY($1) AND stage = 2 AND unmatched_since IS NULL`,
        [unmatched, now],
      );
    if (failed.length > 0)
      await this.pool.query(
        `WITH done AS (
           UPDATE scheduler_operations j
           SET stage = 4, completed_at = $1, status = f.status, result = NULL
           FROM jsonb_to_recordset($2::jsonb) AS f(name text, status jsonb)
           WHERE j.name = f.name AND j.stage = 2 AND j.lease_id IS NULL
             -- Still unmatched: a bot registering meanwhile clears unmatched_since.
             AND j.unmatched_since IS NOT NULL AND j.unmatched_since <= $3
           RETURNING j.name)
         SELECT pg_notify('${OPERATION_CHANNEL}', name) FROM done`,
        [
          now,
          JSON.stringify(failed.map((f) => ({ name: f.name, status: statusToRow(f.status) }))),
          now - this.options.unschedulableTimeoutMs,
        ],
      );
  }

  private unschedulableStatus(platform: Property[], sessions: { offer: Offer }[]): JobStatus {
    return unschedulableStatus(
      platform,
      sessions.map((s) => s.offer),
      this.options.propertyTypes,
    );
  }

  /** Answers every held poll now and holds no more; calls are still served. */
  drain(): void {
    this.closing = true;
    this.polls.pokeAll();
  }

  /** Answers every held poll now, then stops listening and closes the pool. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.closing = true;
      this.polls.pokeAll();
      await Promise.allSettled([...this.running]);
      await this.listener?.close();
      await this.pool.end();
    })();
    return this.closed;
  }

  /** UpdateBotSession calls held on this replica (for tests and metrics). */
  get heldPollCount(): number {
    return this.polls.size;
  }

  // --- plumbing ---

  /** Runs fn, turning database errors into status codes (a lost database is UNAVAILABLE). */
  private async db<T>(fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof RemexError) throw err;
      throw toRemexError(err, 'scheduler database');
    }
  }

  private async tx<T>(fn: (c: pg.PoolClient) => Promise<T>): Promise<T> {
    const c = await this.pool.connect();
    let broken = false;
    try {
      await c.query('BEGIN');
      const result = await fn(c);
      await c.query('COMMIT');
      return result;
    } catch (err) {
      await c.query('ROLLBACK').catch(() => (broken = true));
      throw err;
    } finally {
      c.release(broken);
    }
  }
}

async function one<R extends object>(db: Db, sql: string, values: unknown[]): Promise<R | undefined> {
  const { rows } = await db.query<R>(sql, values);
  return rows[0];
}

/** NOTIFY within the caller's transaction: delivered when it commits. */
async function notify(c: pg.PoolClient, channel: string, payloads: string[]): Promise<void> {
  await c.query('SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p', [channel, payloads]);
}
