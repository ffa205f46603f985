import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startPostgres, type Postgres } from '../../test/helpers/services.js';
import { SHA256 } from '../common/digest.js';
import { Code } from '../common/status.js';
import { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { Stage, type Job } from './job.js';
import { offerOf } from './platform.js';
import { PgScheduler, type PgSchedulerOptions } from './pg-scheduler.js';
import { MIGRATIONS } from './pg-scheduler-migrations.js';
import { LeaseState, type SessionView, type SubmitRequest } from './scheduler-api.js';

let server: Postgres;
const opened: PgScheduler[] = [];

beforeAll(async () => {
  server = await startPostgres();
  // Create the schema once, so each test can start from empty tables.
  await (await PgScheduler.open(options('setup', {}))).close();
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

let clock = 1_000_000;
let ids = 0;
function options(replica: string, over: Partial<PgSchedulerOptions>): PgSchedulerOptions {
  return {
    url: server.url,
    now: () => clock,
    newId: () => `${replica}-${++ids}`,
    botSessionTimeoutMs: 60_000,
    maxAttempts: 3,
    unschedulableTimeoutMs: 30_000,
    completedRetentionMs: 600_000,
    ...over,
  };
}

/** Replicas sharing one database, one clock and one record of what reached the action cache. */
function cluster(over: Partial<PgSchedulerOptions> = {}) {
  clock = 1_000_000;
  const cached: string[] = [];
  const requeued: string[] = [];
  const replica = async (name: string, extra: Partial<PgSchedulerOptions> = {}) => {
    const s = await PgScheduler.open(
      options(name, {
        onSuccess: async (job) => void cached.push(job.name),
        onRequeue: (_job, why) => void requeued.push(why),
        ...over,
        ...extra,
      }),
    );
    opened.push(s);
    return s;
  };
  return { replica, cached, requeued, advance: (ms: number) => (clock += ms) };
}

let n = 0;
function request(over: Partial<SubmitRequest> = {}): SubmitRequest {
  const hash = (++n).toString(16).padStart(64, '0');
  return {
    instance: '',
    fn: SHA256,
    actionDigest: { hash, sizeBytes: 10 },
    action: Buffer.from('action'),
    platform: [],
    priority: 0,
    invocation: 'inv',
    doNotCache: false,
    timeoutMs: 0,
    ...over,
  };
}

const linux = offerOf([
  { key: 'OSFamily', value: 'linux' },
  { key: 'ISA', value: 'x86-64' },
]);
const ok = ActionResult.fromPartial({ exitCode: 0 });

/** Resolves with the job when a watch on s sees it reach the stage. */
function reaches(s: PgScheduler, name: string, stage: Stage): Promise<Job> {
  return new Promise((resolve) => {
    const stop = s.watch(name, (job) => {
      if (job.stage === stage) {
        stop();
        resolve(job);
      }
    });
  });
}

/** Resolves once s holds a long poll. */
async function holding(s: PgScheduler): Promise<void> {
  while (s.heldPollCount === 0) await new Promise((r) => setTimeout(r, 5));
}

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

const pending = (view: SessionView) => view.leases.find((l) => l.state === LeaseState.PENDING);

/** Completes the bot's current lease through `via` and returns the name of each job it ran. */
async function drain(via: PgScheduler[], first: SessionView, count: number): Promise<string[]> {
  const order: string[] = [];
  let view = first;
  for (let i = 0; i < count; i++) {
    const lease = pending(view)!;
    order.push(lease.job.name);
    view = await via[i % via.length]!.updateBotSession(
      view.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
  }
  return order;
}

describe('PgScheduler migrations', () => {
  it('applies its migrations once: a second replica on the same database applies none', async () => {
    await server.psql('CREATE DATABASE migrations_once');
    const url = server.url.replace(/\/remex$/, '/migrations_once');
    const first = await PgScheduler.open(options('m1', { url }));
    opened.push(first);
    const second = await PgScheduler.open(options('m2', { url }));
    opened.push(second);
    expect(first.migrationsApplied).toEqual(MIGRATIONS.map((m) => m.version));
    expect(second.migrationsApplied).toEqual([]);
    const client = new pg.Client({ connectionString: url });
    await client.connect();
    try {
      const { rows } = await client.query(
        "SELECT version FROM remex_migrations WHERE component = 'scheduler' ORDER BY version",
      );
      expect(rows.map((r) => r.version)).toEqual(MIGRATIONS.map((m) => m.version));
    } finally {
      await client.end();
    }
  });
});

describe('PgScheduler replicas', () => {
  it('a bot on B runs work submitted on A, and a watch on A sees EXECUTING and COMPLETED', async () => {
    const { replica, cached } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    const executing = reaches(a, job.name, Stage.EXECUTING);
    const completed = reaches(a, job.name, Stage.COMPLETED);
    const bot = await b.createBotSession('', 'bot-1', linux);
    expect(bot.leases).toEqual([
      expect.objectContaining({
        state: LeaseState.PENDING,
        job: expect.objectContaining({ name: job.name }),
      }),
    ]);
    const lease = bot.leases[0]!;
    await b.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    expect((await executing).stage).toBe(Stage.EXECUTING);
    const result = ActionResult.fromPartial({ exitCode: 0, executionMetadata: { worker: 'bot-1' } });
    await b.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.COMPLETED, result }], 0);
    const done = await completed;
    expect(done.status).toEqual({ code: Code.OK, message: '' });
    expect(done.result?.executionMetadata?.queuedTimestamp).toEqual({ seconds: 1000, nanos: 0 });
    expect(cached).toEqual([job.name]);
    // The session works on A too: the bot may reach either replica next.
    expect((await a.updateBotSession(bot.name, [], 0)).leases).toEqual([]);
  });

  it('a completion reported to both replicas at once writes the action cache once', async () => {
    const { replica, cached } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    const bot = await b.createBotSession('', 'bot', linux);
    const report = [{ id: bot.leases[0]!.id, state: LeaseState.COMPLETED, result: ok }];
    await Promise.all([a, b, a, b].map((s) => s.updateBotSession(bot.name, report, 0)));
    expect(cached).toEqual([job.name]);
    expect((await a.get(job.name))?.stage).toBe(Stage.COMPLETED);
  });

  it('bots polling both replicas at once never get the same job: each is leased exactly once', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const jobs = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 ? a : b).submit(request({ invocation: `inv${i % 3}` }))),
    );
    const stop = new AbortController();
    void Promise.all(jobs.map((j) => reaches(a, j.name, Stage.COMPLETED))).then(() => stop.abort());
    const worker = async (s: PgScheduler, botId: string) => {
      const taken: string[] = [];
      let view = await s.createBotSession('', botId, linux);
      while (!stop.signal.aborted) {
        const lease = pending(view);
        if (lease) taken.push(lease.job.name);
        const reports = lease ? [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }] : [];
        view = await s.updateBotSession(view.name, reports, 30_000, stop.signal);
      }
      return taken;
    };
    const taken = (
      await Promise.all(Array.from({ length: 8 }, (_, i) => worker(i % 2 ? a : b, `bot-${i}`)))
    ).flat();
    expect(taken.sort()).toEqual(jobs.map((j) => j.name).sort());
    const stored = await a.list();
    expect(stored.every((j) => j.stage === Stage.COMPLETED && j.attempts === 0)).toBe(true);
  });

  it('merges identical cacheable actions submitted on different replicas and raises the priority', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const req = request({ priority: 5 });
    const first = await a.submit(req);
    const joined = await b.submit({ ...req, invocation: 'other', priority: 1 });
    expect(joined.name).toBe(first.name);
    expect((await a.get(first.name))?.priority).toBe(1);
    expect((await b.submit({ ...req, doNotCache: true })).name).not.toBe(first.name);
    // Submitted at once on both replicas, one operation still.
    const racing = request();
    const names = await Promise.all([a, b, a, b].map((s) => s.submit(racing)));
    expect(new Set(names.map((j) => j.name)).size).toBe(1);
    // Once it finished, the same action runs anew.
    await a.cancel(first.name);
    expect((await b.submit(req)).name).not.toBe(first.name);
  });

  it('dispatches lower priority values first, FIFO within a priority, across replicas', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const late = await a.submit(request({ priority: 5 }));
    const first = await b.submit(request({ priority: -1 }));
    const second = await a.submit(request({ priority: -1 }));
    const bot = await b.createBotSession('', 'bot', linux);
    expect(await drain([a, b], bot, 3)).toEqual([first.name, second.name, late.name]);
  });

  it('shares the queue fairly between tool invocations', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const big: Job[] = [];
    for (let i = 0; i < 5; i++) big.push(await a.submit(request({ invocation: 'big-build' })));
    const small = await b.submit(request({ invocation: 'small-build' }));
    const bot = await a.createBotSession('', 'bot', linux);
    // The small build's only action runs second, not after all five of the big one.
    expect(await drain([b, a], bot, 3)).toEqual([big[0]!.name, small.name, big[1]!.name]);
  });

  it('a cancel on A wakes the bot long-polling on B with its lease CANCELLED', async () => {
    const { replica, cached } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const queued = await a.submit(request({ priority: 9 }));
    const running = await a.submit(request());
    const bot = await b.createBotSession('', 'bot', linux);
    const lease = bot.leases[0]!;
    expect(lease.job.name).toBe(running.name);
    await b.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    expect((await a.cancel(queued.name)).status?.code).toBe(Code.CANCELLED);
    const poll = b.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 60_000);
    await holding(b);
    expect((await a.cancel(running.name)).status).toEqual({
      code: Code.CANCELLED,
      message: 'the operation was cancelled',
    });
    const answer = await poll;
    expect(answer.leases).toEqual([expect.objectContaining({ id: lease.id, state: LeaseState.CANCELLED })]);
    // A late completion of the cancelled lease changes nothing, and the bot is told only once.
    const after = await a.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
    expect(after.leases).toEqual([]);
    expect((await b.get(running.name))?.status?.code).toBe(Code.CANCELLED);
    expect(cached).toEqual([]);
  });

  it('a bot long-polling on B gets work submitted on A, and its session outlives the poll', async () => {
    const { replica, advance } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const bot = await b.createBotSession('', 'bot', linux);
    const poll = b.updateBotSession(bot.name, [], 60_000);
    await holding(b);
    // Past the session timeout, but the bot is held: a sweep must not expire it.
    advance(61_000);
    await a.sweep();
    const job = await a.submit(request());
    const answer = await poll;
    expect(answer.leases[0]).toMatchObject({ state: LeaseState.PENDING, job: { name: job.name } });
    expect(answer.expireAt).toBe(1_000_000 + 61_000 + 60_000);
  });

  it('a bot registering again on another replica replaces its old session and requeues its lease', async () => {
    const { replica, requeued } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    const old = await a.createBotSession('', 'bot', linux);
    expect(old.leases[0]?.job.name).toBe(job.name);
    const fresh = await b.createBotSession('', 'bot', linux);
    expect(fresh.name).not.toBe(old.name);
    expect(fresh.leases[0]?.job).toMatchObject({ name: job.name, attempts: 1 });
    expect(requeued).toEqual(['bot bot registered again']);
    await expect(a.updateBotSession(old.name, [], 0)).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      message: `bot session ${old.name} is unknown or expired; create a new one`,
    });
  });
});

describe('PgScheduler restart', () => {
  it('keeps queued and running jobs; the running one completes when its bot reports to the new instance', async () => {
    const { replica, cached } = cluster();
    const before = await replica('before');
    const running = await before.submit(request());
    const queued = await before.submit(request());
    const bot = await before.createBotSession('', 'bot', linux);
    const lease = bot.leases[0]!;
    expect(lease.job.name).toBe(running.name);
    await before.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    await before.close();

    const after = await replica('after');
    expect(after.migrationsApplied).toEqual([]);
    expect(await after.get(queued.name)).toMatchObject({ stage: Stage.QUEUED });
    expect(await after.get(running.name)).toMatchObject({ stage: Stage.EXECUTING, leaseId: lease.id });
    const answer = await after.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
    expect(await after.get(running.name)).toMatchObject({
      stage: Stage.COMPLETED,
      status: { code: Code.OK },
    });
    expect(cached).toEqual([running.name]);
    expect(pending(answer)?.job.name).toBe(queued.name);
  });
});

describe('PgScheduler sweep', () => {
  it('requeues the lease of an expired bot session, then fails after max attempts with UNAVAILABLE', async () => {
    const { replica, advance } = cluster({ maxAttempts: 2 });
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    const first = await a.createBotSession('', 'bot-1', linux);
    expect(first.leases[0]?.job.name).toBe(job.name);
    advance(61_000);
    await b.sweep();
    expect(await a.get(job.name)).toMatchObject({ stage: Stage.QUEUED, attempts: 1 });
    await expect(b.updateBotSession(first.name, [], 0)).rejects.toMatchObject({ code: Code.NOT_FOUND });
    const second = await b.createBotSession('', 'bot-2', linux);
    expect(second.leases[0]?.job.name).toBe(job.name);
    advance(61_000);
    await a.sweep();
    const failed = (await b.get(job.name))!;
    expect(failed.stage).toBe(Stage.COMPLETED);
    expect(failed.status).toEqual({
      code: Code.UNAVAILABLE,
      message: 'the action lost its worker 2 times (last: bot session of bot-2 expired); giving up',
    });
  });

  it('sweeps running on every replica at once expire a session exactly once', async () => {
    const { replica, advance, requeued } = cluster({ maxAttempts: 5 });
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    await b.createBotSession('', 'bot', linux);
    advance(61_000);
    await Promise.all([a.sweep(), b.sweep(), a.sweep(), b.sweep()]);
    expect(await a.get(job.name)).toMatchObject({ stage: Stage.QUEUED, attempts: 1 });
    expect(requeued).toEqual(['bot session of bot expired']);
  });

  it('fails an action no worker can run with FAILED_PRECONDITION naming the properties', async () => {
    const { replica, advance } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    await b.createBotSession('', 'bot', linux);
    const job = await a.submit(request({ platform: [{ name: 'OSFamily', value: 'windows' }] }));
    advance(29_000);
    await b.sweep();
    expect((await a.get(job.name))?.stage).toBe(Stage.QUEUED);
    advance(2_000);
    await Promise.all([a.sweep(), b.sweep()]);
    expect(await a.get(job.name)).toMatchObject({
      stage: Stage.COMPLETED,
      status: {
        code: Code.FAILED_PRECONDITION,
        message: 'no worker matches the platform properties OSFamily=windows (requested: OSFamily=windows)',
      },
    });
  });

  it('keeps a queued job waiting while a matching worker joins in time', async () => {
    const { replica, advance } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request({ platform: [{ name: 'pool', value: 'big' }] }));
    advance(20_000);
    await a.sweep();
    const bot = await b.createBotSession('', 'bot', offerOf([{ key: 'pool', value: 'big' }]));
    expect(bot.leases[0]?.job.name).toBe(job.name);
    advance(20_000);
    await a.sweep();
    expect((await a.get(job.name))?.stage).toBe(Stage.QUEUED);
  });

  it('forgets finished operations after the retention period', async () => {
    const { replica, advance } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const job = await a.submit(request());
    await a.cancel(job.name);
    advance(599_000);
    await b.sweep();
    expect(await a.get(job.name)).toBeDefined();
    advance(2_000);
    await b.sweep();
    expect(await a.get(job.name)).toBeUndefined();
  });
});

describe('PgScheduler operations and bots', () => {
  it('records cache hits, lists oldest first and deletes', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const b = await replica('b');
    const hit = await a.recordCached(request(), ok);
    expect(hit).toMatchObject({ stage: Stage.COMPLETED, cachedResult: true, status: { code: Code.OK } });
    const queued = await b.submit(request());
    expect((await a.list()).map((j) => j.name)).toEqual([hit.name, queued.name]);
    await b.delete(hit.name);
    expect(await a.get(hit.name)).toBeUndefined();
    await expect(a.delete(hit.name)).rejects.toMatchObject({
      code: Code.NOT_FOUND,
      message: `operation ${hit.name} does not exist`,
    });
    // Deleting does not cancel: an operation in flight is refused and keeps its place.
    await expect(a.delete(queued.name)).rejects.toMatchObject({ code: Code.FAILED_PRECONDITION });
    expect((await b.get(queued.name))?.stage).toBe(Stage.QUEUED);
  });

  it('gives no new lease to a bot that is not accepting work, and does not hold it', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const bot = await a.createBotSession('', 'bot', linux);
    await a.submit(request());
    const answer = await a.updateBotSession(bot.name, [], 60_000, undefined, false);
    expect(answer.leases).toEqual([]);
  });

  it('close() answers held polls at once', async () => {
    const { replica } = cluster();
    const a = await replica('a');
    const bot = await a.createBotSession('', 'bot', linux);
    const poll = a.updateBotSession(bot.name, [], 60_000);
    await holding(a);
    await a.close();
    expect((await poll).leases).toEqual([]);
  });

  it('answers UNAVAILABLE when the database is gone', async () => {
    const lost = await startPostgres();
    const s = await PgScheduler.open(options('lost', { url: lost.url }));
    opened.push(s);
    await s.ping();
    await fastShutdown(lost);
    await expect(s.ping()).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    await expect(s.get('operations/x')).rejects.toMatchObject({ code: Code.UNAVAILABLE });
    await s.close();
    await lost.stop();
  });
});
