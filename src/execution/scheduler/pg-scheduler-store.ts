import pg from 'pg';
import { toRemexError } from '../../common/error-mapping.js';
import { RemexError, aborted } from '../../common/status.js';
import { pgConfig } from '../../pg/connection.js';
import { migrate } from '../../pg/migrate.js';
import type { Property } from '../platform.js';
import type { Job } from './job.js';
import { PgListener } from './pg-listener.js';
import { MIGRATIONS } from './pg-migrations.js';
import {
  insertColumns,
  mutableColumns,
  offerToRow,
  rowToJob,
  sessionFromRow,
  type OperationRow,
  type SessionRow,
} from './pg-rows.js';
import type {
  BotSession,
  QueuedJob,
  Refusal,
  SchedulerStore,
  SessionState,
  StoreEvent,
  StoreListener,
} from './scheduler-store.js';

export interface PgSchedulerStoreOptions {
  /** postgres://… of the database every replica shares. */
  url: string;
  /** Connections in this replica's pool (default 10); LISTEN takes one more. */
  poolSize?: number;
}

/** NOTIFY channels, one per event type; payloads name what changed. */
const CHANNELS: Record<StoreEvent['type'], string> = {
  job: 'remex_scheduler_operation',
  queue: 'remex_scheduler_queue',
  session: 'remex_scheduler_session',
};
const EVENT_OF_CHANNEL = new Map(Object.entries(CHANNELS).map(([type, channel]) => [channel, type]));

/** Queued rows read per step while looking for a job that fits a bot's offer. */
const CANDIDATE_BATCH = 32;

/** Rows of scheduler_operations (alias t) occupying their bot session (occupiesSession()). */
const occupies = (t: string) =>
  `((${t}.lease_id IS NOT NULL AND ${t}.stage < 4) OR ${t}.cancel_notice_lease IS NOT NULL)`;

/** The unique index that keeps a bot session to one occupant. */
const OCCUPANT_INDEX = 'scheduler_operations_session_occupant';

/** The session columns, renamed where they clash with scheduler_operations'. */
const SESSION_COLUMNS =
  's.name AS s_name, s.bot_id AS s_bot_id, s.instance AS s_instance, s.offer AS s_offer, ' +
  's.expire_at AS s_expire_at, s.accepts_work AS s_accepts_work';

type Db = pg.Pool | pg.PoolClient;
type StateRow = Partial<OperationRow> & {
  s_name: string;
  s_bot_id: string;
  s_instance: string;
  s_offer: SessionRow['offer'];
  s_expire_at: string;
  s_accepts_work: boolean;
};

/**
 * The scheduler's records in PostgreSQL, shared by every execution replica: operations
 * (with their lease: lease_id, lease_state, bot_session on the operation row), bot
 * sessions and the fair-share dispatch numbers, in scheduler_* tables created by
 * numbered migrations. The tables are the only truth: any replica may serve any call,
 * and a restarted one carries on from them.
 *
 * Every write is one statement (creating a session is one short transaction): a
 * compare-and-set on the row's version, with the events it announces sent by pg_notify
 * in the same statement, so they are delivered iff it commits. Each replica LISTENs on a
 * dedicated connection and hands the events to its scheduler; after that connection is
 * re-made, subscribers are told to look at everything again.
 */
export class PgSchedulerStore implements SchedulerStore {
  private readonly listeners = new Set<StoreListener>();
  /** The dispatch number each candidate had when nextQueued read it: the keyset cursor. */
  private readonly servedAtRead = new WeakMap<Job, number>();
  private listener?: PgListener;
  private closed?: Promise<void>;

  private constructor(
    private readonly pool: pg.Pool,
    /** The migration versions this replica applied at start (none when already up to date). */
    readonly migrationsApplied: readonly number[],
  ) {}

  /** Connects, brings the schema up to date and starts listening for every replica's events. */
  static async open(options: PgSchedulerStoreOptions): Promise<PgSchedulerStore> {
    const pool = new pg.Pool(pgConfig(options.url, { max: options.poolSize ?? 10 }));
    // A lost idle connection is dropped from the pool; the next query reconnects or fails.
    pool.on('error', () => {});
    try {
      const applied = await migrate(pool, 'scheduler', MIGRATIONS);
      const store = new PgSchedulerStore(pool, applied);
      store.listener = await PgListener.start(
        options.url,
        Object.values(CHANNELS),
        (channel, payload) => store.deliver(channel, payload),
        () => {
          for (const l of store.listeners) l.reconnected();
        },
      );
      return store;
    } catch (err) {
      await pool.end().catch(() => {});
      throw toRemexError(err, 'scheduler database');
    }
  }

  private deliver(channel: string, payload: string): void {
    const type = EVENT_OF_CHANNEL.get(channel);
    if (!type) return;
    const e = (type === 'queue' ? { type, instance: payload } : { type, name: payload }) as StoreEvent;
    for (const l of this.listeners) l.event(e);
  }

  /** Answers when the database does: for health checks. */
  async ping(): Promise<void> {
    await this.db(() => this.pool.query('SELECT 1'));
  }

  // --- jobs ---

  async insert(job: Job, events: readonly StoreEvent[]): Promise<{ job: Job; inserted: boolean }> {
    return this.db(async () => {
      const fields = insertColumns(job);
      const values = Object.values(fields);
      const notify = notifyColumn(events, values);
      for (let attempt = 0; attempt < 5; attempt++) {
        const inserted = await one<OperationRow>(
          this.pool,
          `WITH ins AS (
             INSERT INTO scheduler_operations (${Object.keys(fields).join(', ')})
             VALUES (${Object.keys(fields)
               .map((_, i) => `$${i + 1}`)
               .join(', ')})
             ON CONFLICT (instance, merge_key) WHERE stage < 4 AND merge_key IS NOT NULL DO NOTHING
             RETURNING *)
           SELECT ins.*, ${notify} AS notified FROM ins`,
          values,
        );
        if (inserted) return { job: rowToJob(inserted), inserted: true };
        // An identical job is in flight: join it, unless it completed meanwhile.
        const existing = await one<OperationRow>(
          this.pool,
          'SELECT * FROM scheduler_operations WHERE instance = $1 AND merge_key = $2 AND stage < 4',
          [job.instance, job.mergeKey],
        );
        if (existing) return { job: rowToJob(existing), inserted: false };
      }
      throw aborted(`job ${job.digest.hash}/${job.digest.sizeBytes} is contended; retry`);
    });
  }

  async get(name: string): Promise<Job | undefined> {
    return this.db(async () => {
      const row = await one<OperationRow>(this.pool, 'SELECT * FROM scheduler_operations WHERE name = $1', [
        name,
      ]);
      return row && rowToJob(row);
    });
  }

  async list(): Promise<Job[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<OperationRow>('SELECT * FROM scheduler_operations ORDER BY seq');
      return rows.map(rowToJob);
    });
  }

  update(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal> {
    return this.write(next, events, false);
  }

  claim(next: Job, events: readonly StoreEvent[]): Promise<Job | Refusal> {
    return this.write(next, events, true);
  }

  /** The compare-and-set of update() and claim(); a claim also records the dispatch for fair share. */
  private async write(next: Job, events: readonly StoreEvent[], dispatch: boolean): Promise<Job | Refusal> {
    return this.db(async () => {
      const fields = mutableColumns(next);
      const values: unknown[] = [next.name, next.version, ...Object.values(fields)];
      const set = Object.keys(fields)
        .map((column, i) => `${column} = $${i + 3}`)
        .join(', ');
      const notify = notifyColumn(events, values);
      try {
        const row = await one<OperationRow>(
          this.pool,
          `WITH upd AS (
             UPDATE scheduler_operations SET ${set}, version = version + 1
             WHERE name = $1 AND version = $2
             RETURNING *)${
               dispatch
                 ? `, served AS (
             INSERT INTO scheduler_invocations (invocation, last_served)
             SELECT invocation, nextval('scheduler_dispatches') FROM upd
             ON CONFLICT (invocation) DO UPDATE SET last_served = excluded.last_served)`
                 : ''
             }
           SELECT upd.*, ${notify} AS notified FROM upd`,
          values,
        );
        return row ? rowToJob(row) : 'changed';
      } catch (err) {
        if (err instanceof pg.DatabaseError && err.code === '23505' && err.constraint === OCCUPANT_INDEX)
          return 'busy';
        throw err;
      }
    });
  }

  async deleteCompleted(name: string): Promise<boolean> {
    return this.db(async () => {
      const { rowCount } = await this.pool.query(
        'DELETE FROM scheduler_operations WHERE name = $1 AND stage = 4',
        [name],
      );
      return (rowCount ?? 0) > 0;
    });
  }

  async forgetCompletedBefore(time: number): Promise<void> {
    await this.db(async () => {
      await this.pool.query('DELETE FROM scheduler_operations WHERE stage = 4 AND completed_at <= $1', [
        time,
      ]);
      // Fair-share memory of invocations that have no operation left.
      await this.pool.query(
        `DELETE FROM scheduler_invocations i
         WHERE NOT EXISTS (SELECT 1 FROM scheduler_operations j WHERE j.invocation = i.invocation)`,
      );
    });
  }

  /**
   * Reads queued rows in dispatch order by keyset (after the last row seen, not at an
   * offset: rows other bots take meanwhile would shift an offset and skip a candidate),
   * and returns the first that fits.
   */
  async nextQueued(
    instance: string,
    after: Job | undefined,
    fits: (platform: Property[]) => boolean,
  ): Promise<Job | undefined> {
    return this.db(async () => {
      let cursor = after && ([after.priority, this.servedAtRead.get(after) ?? 0, after.seq] as const);
      for (;;) {
        const { rows } = await this.pool.query<OperationRow & { served: string }>(
          `SELECT j.*, COALESCE(i.last_served, 0) AS served
           FROM scheduler_operations j
           LEFT JOIN scheduler_invocations i ON i.invocation = j.invocation
           WHERE j.instance = $1 AND j.stage = 2 AND j.lease_id IS NULL
             AND ($3::integer IS NULL OR (j.priority, COALESCE(i.last_served, 0), j.seq) > ($3, $4::bigint, $5::bigint))
           ORDER BY j.priority, COALESCE(i.last_served, 0), j.seq
           LIMIT $2`,
          [instance, CANDIDATE_BATCH, cursor?.[0] ?? null, cursor?.[1] ?? null, cursor?.[2] ?? null],
        );
        for (const row of rows) {
          if (!fits(row.platform)) continue;
          const job = rowToJob(row);
          this.servedAtRead.set(job, Number(row.served));
          return job;
        }
        const last = rows.at(-1);
        if (!last || rows.length < CANDIDATE_BATCH) return undefined;
        cursor = [last.priority, Number(last.served), Number(last.seq)];
      }
    });
  }

  async queuedJobs(filter?: { instance: string; unmatched: true }): Promise<QueuedJob[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<
        Pick<OperationRow, 'name' | 'instance' | 'platform' | 'unmatched_since'>
      >(
        `SELECT name, instance, platform, unmatched_since FROM scheduler_operations
         WHERE stage = 2 AND lease_id IS NULL
           ${filter ? 'AND instance = $1 AND unmatched_since IS NOT NULL' : ''}`,
        filter ? [filter.instance] : [],
      );
      return rows.map((r) => ({
        name: r.name,
        instance: r.instance,
        platform: r.platform,
        unmatchedSince: r.unmatched_since === null ? undefined : Number(r.unmatched_since),
      }));
    });
  }

  async setUnmatched(names: readonly string[], since: number | undefined): Promise<void> {
    await this.db(() =>
      this.pool.query(
        `UPDATE scheduler_operations SET unmatched_since = $2, version = version + 1
         WHERE name = ANY($1) AND stage = 2 AND lease_id IS NULL
           AND unmatched_since IS ${since === undefined ? 'NOT NULL' : 'NULL'}`,
        [names, since ?? null],
      ),
    );
  }

  // --- bot sessions ---

  async createSession(session: BotSession): Promise<BotSession[]> {
    return this.db(() =>
      this.tx(async (c) => {
        // Registrations of one bot on several replicas take turns.
        await c.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`remex-bot:${session.botId}`]);
        const { rows } = await c.query<SessionRow>(
          `WITH del AS (DELETE FROM scheduler_bot_sessions WHERE bot_id = $1 RETURNING *)
           SELECT del.*, pg_notify('${CHANNELS.session}', del.name) AS notified FROM del`,
          [session.botId],
        );
        await c.query(
          `INSERT INTO scheduler_bot_sessions (name, bot_id, instance, offer, expire_at, accepts_work)
           VALUES ($1, $2, $3, $4, $5, $6)`,
          [
            session.name,
            session.botId,
            session.instance,
            offerToRow(session.offer),
            session.expireAt,
            session.acceptsWork,
          ],
        );
        return rows.map(sessionFromRow);
      }),
    );
  }

  async touchSession(
    name: string,
    expireAt: number,
    acceptsWork: boolean,
  ): Promise<SessionState | undefined> {
    return this.db(async () => {
      const { rows } = await this.pool.query<StateRow>(
        `WITH s AS (
           UPDATE scheduler_bot_sessions SET expire_at = $2, accepts_work = $3 WHERE name = $1 RETURNING *)
         SELECT ${SESSION_COLUMNS}, j.* FROM s
         LEFT JOIN scheduler_operations j ON j.bot_session = s.name AND ${occupies('j')}`,
        [name, expireAt, acceptsWork],
      );
      return stateFromRows(rows);
    });
  }

  async sessionState(name: string): Promise<SessionState | undefined> {
    return this.db(async () => {
      const { rows } = await this.pool.query<StateRow>(
        `SELECT ${SESSION_COLUMNS}, j.* FROM scheduler_bot_sessions s
         LEFT JOIN scheduler_operations j ON j.bot_session = s.name AND ${occupies('j')}
         WHERE s.name = $1`,
        [name],
      );
      return stateFromRows(rows);
    });
  }

  async sessions(instance?: string): Promise<BotSession[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<SessionRow>(
        `SELECT * FROM scheduler_bot_sessions ${instance === undefined ? '' : 'WHERE instance = $1'}`,
        instance === undefined ? [] : [instance],
      );
      return rows.map(sessionFromRow);
    });
  }

  /** Each expired session is claimed with SKIP LOCKED, so replicas sweeping at once delete it once. */
  async expireSessions(time: number): Promise<BotSession[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<SessionRow>(
        `WITH del AS (
           DELETE FROM scheduler_bot_sessions WHERE name IN (
             SELECT name FROM scheduler_bot_sessions WHERE expire_at <= $1 FOR UPDATE SKIP LOCKED)
           RETURNING *)
         SELECT del.*, pg_notify('${CHANNELS.session}', del.name) AS notified FROM del`,
        [time],
      );
      return rows.map(sessionFromRow);
    });
  }

  async occupants(sessions: readonly string[]): Promise<Job[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<OperationRow>(
        `SELECT * FROM scheduler_operations j WHERE j.bot_session = ANY($1) AND ${occupies('j')}`,
        [sessions],
      );
      return rows.map(rowToJob);
    });
  }

  async orphans(): Promise<Job[]> {
    return this.db(async () => {
      const { rows } = await this.pool.query<OperationRow>(
        `SELECT * FROM scheduler_operations j
         WHERE j.lease_id IS NOT NULL AND j.stage < 4
           AND NOT EXISTS (SELECT 1 FROM scheduler_bot_sessions s WHERE s.name = j.bot_session)`,
      );
      return rows.map(rowToJob);
    });
  }

  subscribe(listener: StoreListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Stops listening and closes the pool. */
  close(): Promise<void> {
    this.closed ??= (async () => {
      this.listeners.clear();
      await this.listener?.close();
      await this.pool.end();
    })();
    return this.closed;
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

/**
 * A select-list expression that sends the events by pg_notify once per row of the
 * statement's result, so only when its write happened; appends its parameters to values.
 */
function notifyColumn(events: readonly StoreEvent[], values: unknown[]): string {
  if (events.length === 0) return 'NULL';
  values.push(
    events.map((e) => CHANNELS[e.type]),
    events.map((e) => (e.type === 'queue' ? e.instance : e.name)),
  );
  const n = values.length;
  return `(SELECT count(pg_notify(e.channel, e.payload)) FROM unnest($${n - 1}::text[], $${n}::text[]) AS e(channel, payload))`;
}

function stateFromRows(rows: StateRow[]): SessionState | undefined {
  const row = rows[0];
  if (!row) return undefined;
  const session = sessionFromRow({
    name: row.s_name,
    bot_id: row.s_bot_id,
    instance: row.s_instance,
    offer: row.s_offer,
    expire_at: row.s_expire_at,
    accepts_work: row.s_accepts_work,
  });
  return { session, occupant: row.name ? rowToJob(row as OperationRow) : undefined };
}
