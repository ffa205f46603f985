import type { Migration } from '../../pg/migrate.js';

/**
 * The schema of PgSchedulerStore, applied at start by migrate(pool, 'scheduler', ...). Kept as
 * TypeScript constants because the build is plain tsc, which would not copy .sql files.
 * Append new migrations; never edit one that has been released.
 *
 * Times are milliseconds of the scheduler's injected clock (bigint), not timestamptz, so
 * tests with a fake clock and replicas agree on what "now" means.
 */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'create operations, bot sessions and fair-share dispatch tables',
    sql: `
      -- One row per operation (Job). Its lease lives here too: a session's lease is the
      -- operation whose bot_session names it and whose lease_id is set.
      CREATE TABLE scheduler_operations (
        name text PRIMARY KEY,
        seq bigserial NOT NULL,
        instance text NOT NULL,
        digest_function text NOT NULL,
        action_hash text NOT NULL,
        action_size bigint NOT NULL,
        action bytea NOT NULL,
        platform jsonb NOT NULL,
        priority integer NOT NULL,
        invocation text NOT NULL,
        do_not_cache boolean NOT NULL,
        timeout_ms bigint NOT NULL,
        stage smallint NOT NULL,
        queued_at bigint NOT NULL,
        started_at bigint,
        completed_at bigint,
        attempts integer NOT NULL DEFAULT 0,
        unmatched_since bigint,
        lease_id text,
        lease_state smallint,
        bot_session text,
        cancel_requested boolean NOT NULL DEFAULT false,
        -- A cancelled lease its bot has not been told about yet.
        cancel_notice_lease text,
        result bytea,
        status jsonb,
        cached_result boolean NOT NULL DEFAULT false,
        message text NOT NULL DEFAULT ''
      );
      -- Identical cacheable actions in flight share one operation (stage < COMPLETED).
      CREATE UNIQUE INDEX scheduler_operations_in_flight
        ON scheduler_operations (instance, digest_function, action_hash, action_size)
        WHERE stage < 4 AND NOT do_not_cache;
      -- The queue: QUEUED and not leased, in dispatch order.
      CREATE INDEX scheduler_operations_queue
        ON scheduler_operations (instance, priority, seq)
        WHERE stage = 2 AND lease_id IS NULL;
      CREATE INDEX scheduler_operations_bot_session
        ON scheduler_operations (bot_session) WHERE bot_session IS NOT NULL;
      CREATE INDEX scheduler_operations_completed
        ON scheduler_operations (completed_at) WHERE stage = 4;
      CREATE INDEX scheduler_operations_seq ON scheduler_operations (seq);
      CREATE INDEX scheduler_operations_invocation ON scheduler_operations (invocation);

      CREATE TABLE scheduler_bot_sessions (
        name text PRIMARY KEY,
        bot_id text NOT NULL UNIQUE,
        instance text NOT NULL,
        -- [[key, [value, ...]], ...]
        offer jsonb NOT NULL,
        expire_at bigint NOT NULL,
        accepts_work boolean NOT NULL DEFAULT true
      );
      CREATE INDEX scheduler_bot_sessions_expire_at ON scheduler_bot_sessions (expire_at);

      -- Fair share: when each tool invocation was last served, as a dispatch number.
      CREATE SEQUENCE scheduler_dispatches;
      CREATE TABLE scheduler_invocations (
        invocation text PRIMARY KEY,
        last_served bigint NOT NULL
      );
    `,
  },
  {
    version: 2,
    name: 'jobs of any kind, compare-and-set versions, one occupant per bot session',
    sql: `
      -- A job carries a payload of any kind (an Action is one); its digest is the payload's.
      ALTER TABLE scheduler_operations RENAME COLUMN action TO payload;
      ALTER TABLE scheduler_operations RENAME COLUMN action_hash TO digest_hash;
      ALTER TABLE scheduler_operations RENAME COLUMN action_size TO digest_size;
      ALTER TABLE scheduler_operations ADD COLUMN kind text;
      UPDATE scheduler_operations SET kind = 'build.bazel.remote.execution.v2.Action';
      ALTER TABLE scheduler_operations ALTER COLUMN kind SET NOT NULL;

      -- Identical jobs in flight merge by a key their submitter chooses (NULL: never).
      ALTER TABLE scheduler_operations ADD COLUMN merge_key text;
      UPDATE scheduler_operations SET merge_key = digest_function || '/' || digest_hash || '/' || digest_size
        WHERE NOT do_not_cache;
      DROP INDEX scheduler_operations_in_flight;
      CREATE UNIQUE INDEX scheduler_operations_in_flight
        ON scheduler_operations (instance, merge_key)
        WHERE stage < 4 AND merge_key IS NOT NULL;
      ALTER TABLE scheduler_operations DROP COLUMN do_not_cache;

      -- The result as the worker sent it: google.protobuf.Any's type and value.
      ALTER TABLE scheduler_operations ADD COLUMN result_type text;
      UPDATE scheduler_operations SET result_type = 'type.googleapis.com/build.bazel.remote.execution.v2.ActionResult'
        WHERE result IS NOT NULL;

      -- Every write is a compare-and-set on the version.
      ALTER TABLE scheduler_operations ADD COLUMN version integer NOT NULL DEFAULT 0;

      -- A bot session is occupied by at most one job: its live lease, or a cancellation
      -- its bot has not been told about.
      CREATE UNIQUE INDEX scheduler_operations_session_occupant
        ON scheduler_operations (bot_session)
        WHERE (lease_id IS NOT NULL AND stage < 4) OR cancel_notice_lease IS NOT NULL;
    `,
  },
];
