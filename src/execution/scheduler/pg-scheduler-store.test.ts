import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPostgres, type Postgres } from '../../../test/helpers/services.js';
import { Code } from '../../common/status.js';
import { LeaseState, Stage } from './job.js';
import { MIGRATIONS } from './pg-migrations.js';
import { PgSchedulerStore } from './pg-scheduler-store.js';
import {
  START_TIME,
  linux,
  pending,
  recordingOptions,
  request,
  schedulerContract,
  type OpenReplicas,
} from './scheduler.contract.js';
import { Scheduler } from './scheduler.js';

let server: Postgres;
const opened: { close(): Promise<void> }[] = [];

beforeAll(async () => {
  server = await startPostgres();
  // Create the schema once, so each test can start from empty tables.
  await (await PgSchedulerStore.open({ url: server.url })).close();
});
afterAll(async () => {
  if (!server) return;
  await fastShutdown(server);
  await server.stop();
});
beforeEach(async () => {
  await server.psql('TRUNCATE scheduler_operations, scheduler_bot_sessions, scheduler_invocations');
});
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

/**
 * Replicas on one database, with one clock and one record of what completion did. Each
 * replica has its own store (pool and LISTEN connection), as separate processes would.
 */
function cluster(url = server.url) {
  let clock = START_TIME;
  let ids = 0;
  const settled: string[] = [];
  const requeued: string[] = [];
  const replica = async (name: string, over: Parameters<OpenReplicas>[0] = {}) => {
    const store = await PgSchedulerStore.open({ url });
    const scheduler = new Scheduler({
      ...recordingOptions(() => clock, settled, requeued),
      store,
      newId: () => `${name}-${++ids}`,
      ...over,
    });
    opened.push(scheduler);
    return { scheduler, store };
  };
  return { replica, settled, requeued, advance: (ms: number) => (clock += ms) };
}

schedulerContract('PostgreSQL', async (over) => {
  const { replica, settled, requeued, advance } = cluster();
  const { scheduler, store } = await replica('a', over);
  return { client: scheduler, worker: scheduler, store, settled, requeued, advance };
});

// Clients on one replica, bots on another: every scenario holds across replicas.
schedulerContract('PostgreSQL, two replicas', async (over) => {
  const { replica, settled, requeued, advance } = cluster();
  const a = await replica('a', over);
  const b = await replica('b', over);
  return { client: a.scheduler, worker: b.scheduler, store: a.store, settled, requeued, advance };
});

/**
 * Stops the postmaster itself with a fast shutdown (it disconnects every client and
 * exits). Postgres.stop() alone signals runuser, which does not bring the server down:
 * it is killed after 10 s and the server is left running.
 */
async function fastShutdown(p: Postgres): Promise<void> {
  const dataDir = (await p.psql('SHOW data_directory')).trim();
  const pid = Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);
  process.kill(pid, 'SIGINT');
  for (;;) {
    try {
      process.kill(pid, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

async function query(url: string, sql: string): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

describe('PgSchedulerStore migrations', () => {
  it('applies its migrations once: a second replica on the same database applies none', async () => {
    await server.psql('CREATE DATABASE migrations_once');
    const url = server.url.replace(/\/remex$/, '/migrations_once');
    const first = await PgSchedulerStore.open({ url });
    opened.push(first);
    const second = await PgSchedulerStore.open({ url });
    opened.push(second);
    expect(first.migrationsApplied).toEqual(MIGRATIONS.map((m) => m.version));
    expect(second.migrationsApplied).toEqual([]);
    const { rows } = await query(
      url,
      "SELECT version FROM remex_migrations WHERE component = 'scheduler' ORDER BY version",
    );
    expect(rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
  });

  it('carries the operations of the first schema over: queued, merged and finished ones keep working', async () => {
    await server.psql('CREATE DATABASE upgrade_from_1');
    const url = server.url.replace(/\/remex$/, '/upgrade_from_1');
    await query(
      url,
      `CREATE TABLE remex_migrations (component text NOT NULL, version integer NOT NULL,
      name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))`,
    );
    await query(url, MIGRATIONS[0]!.sql);
    await query(url, `INSERT INTO remex_migrations (component, version, name) VALUES ('scheduler', 1, 'v1')`);
    const hash = 'ab'.repeat(32);
    await query(
      url,
      `INSERT INTO scheduler_operations (name, instance, digest_function, action_hash, action_size, action,
         platform, priority, invocation, do_not_cache, timeout_ms, stage, queued_at)
       VALUES ('operations/old', '', 'sha256', '${hash}', 140, '\\x0a00', '[]', 0, 'inv', false, 0, 2, ${START_TIME}),
              ('operations/done', '', 'sha256', '${'cd'.repeat(32)}', 7, '\\x0a01', '[]', 0, 'inv', true, 0, 4, ${START_TIME})`,
    );
    await query(
      url,
      `UPDATE scheduler_operations SET result = '\\x0801', completed_at = ${START_TIME} WHERE name = 'operations/done'`,
    );
    const { replica } = cluster(url);
    const { scheduler, store } = await replica('up');
    expect(store.migrationsApplied).toEqual([2]);
    expect(await scheduler.get('operations/old')).toMatchObject({
      kind: 'build.bazel.remote.execution.v2.Action',
      payload: Buffer.from([0x0a, 0x00]),
      digest: { hash, sizeBytes: 140 },
      mergeKey: `sha256/${hash}/140`,
      stage: Stage.QUEUED,
      version: 0,
    });
    expect(await scheduler.get('operations/done')).toMatchObject({
      mergeKey: undefined,
      result: {
        typeUrl: 'type.googleapis.com/build.bazel.remote.execution.v2.ActionResult',
        value: Buffer.from([8, 1]),
      },
    });
    // The old operation still merges with the same action and still runs.
    const joined = await scheduler.submit({
      ...request(),
      digest: { hash, sizeBytes: 140 },
      mergeKey: `sha256/${hash}/140`,
    });
    expect(joined.name).toBe('operations/old');
    const bot = await scheduler.createBotSession('', 'bot', linux);
    expect(pending(bot)?.job.name).toBe('operations/old');
  });
});

describe('PgSchedulerStore restart', () => {
  it('keeps queued and running jobs; the running one completes when its bot reports to the new replica', async () => {
    const { replica, settled } = cluster();
    const before = await replica('before');
    const running = await before.scheduler.submit(request());
    const queued = await before.scheduler.submit(request());
    const bot = await before.scheduler.createBotSession('', 'bot', linux);
    const lease = bot.leases[0]!;
    expect(lease.job.name).toBe(running.name);
    await before.scheduler.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    await before.scheduler.close();

    const after = await replica('after');
    expect(after.store.migrationsApplied).toEqual([]);
    expect(await after.scheduler.get(queued.name)).toMatchObject({ stage: Stage.QUEUED });
    expect(await after.scheduler.get(running.name)).toMatchObject({
      stage: Stage.EXECUTING,
      leaseId: lease.id,
    });
    const answer = await after.scheduler.updateBotSession(
      bot.name,
      [
        {
          id: lease.id,
          state: LeaseState.COMPLETED,
          result: { typeUrl: 'x/remex.test.Result', value: Buffer.alloc(0) },
        },
      ],
      0,
    );
    expect(await after.scheduler.get(running.name)).toMatchObject({
      stage: Stage.COMPLETED,
      status: { code: Code.OK },
    });
    expect(settled).toEqual([running.name]);
    expect(pending(answer)?.job.name).toBe(queued.name);
  });
});

describe('PgSchedulerStore faults', () => {
  it('answers UNAVAILABLE when the database is gone', async () => {
    const lost = await startPostgres();
    const store = await PgSchedulerStore.open({ url: lost.url });
    opened.push(store);
    await store.ping();
    await fastShutdown(lost);
    await expect(store.ping()).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    await expect(store.get('operations/x')).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    await store.close();
    await lost.stop();
  });
});
