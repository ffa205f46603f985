import { describe, expect, it } from 'vitest';
import { SHA256 } from '../../common/digest.js';
import { Code } from '../../common/status.js';
import type { Any } from '../../gen/google/protobuf/any.js';
import { offerOf } from '../platform.js';
import { LeaseState, Stage, type Job, type JobRequest } from './job.js';
import type { Outcome, Scheduler, SchedulerOptions, SessionView } from './scheduler.js';
import type { SchedulerStore } from './scheduler-store.js';

/**
 * The scheduler's behaviour, written once and run on every store (and, for a shared
 * store, across two replicas): a store passes when every scenario holds on it.
 */

/** Schedulers over one set of records, one clock, and a record of what completion did. */
export interface Replicas {
  /** Where clients submit, cancel, list and watch. */
  client: Scheduler;
  /** Where bots register and poll: the client itself, or another replica on the same store. */
  worker: Scheduler;
  /** The client's store, for scenarios that reach below the scheduler. */
  store: SchedulerStore;
  /** Names of jobs whose settle step ran, in order. */
  settled: string[];
  /** Why each lost lease was requeued, in order. */
  requeued: string[];
  advance(ms: number): void;
}

/** Opens fresh, empty replicas with the contract's defaults, overridden by `over`. */
export type OpenReplicas = (over?: Partial<SchedulerOptions>) => Promise<Replicas>;

/** The contract's scheduler settings; opener functions start from these. */
export const CONTRACT_OPTIONS = {
  botSessionTimeoutMs: 60_000,
  maxAttempts: 3,
  unschedulableTimeoutMs: 30_000,
  completedRetentionMs: 600_000,
} as const;

export const START_TIME = 1_000_000;
export const KIND = 'remex.test.Job';

/** Options every opener passes: the fake clock and the recording hooks. */
export function recordingOptions(now: () => number, settled: string[], requeued: string[]) {
  return {
    ...CONTRACT_OPTIONS,
    now,
    // The settle step tags the result, so scenarios can see that what it returns is recorded.
    settle: {
      [KIND]: async (job: Job, outcome: Outcome): Promise<Outcome> => {
        settled.push(job.name);
        return outcome.result
          ? { ...outcome, result: { ...outcome.result, typeUrl: `${outcome.result.typeUrl}+settled` } }
          : outcome;
      },
    },
    onRequeue: (_job: Job, why: string) => void requeued.push(why),
  };
}

let n = 0;
export function request(over: Partial<JobRequest> = {}): JobRequest {
  const hash = (++n).toString(16).padStart(64, '0');
  return {
    instance: '',
    kind: KIND,
    payload: Buffer.from(`payload ${n}`),
    fn: SHA256,
    digest: { hash, sizeBytes: 10 },
    mergeKey: hash,
    platform: [],
    priority: 0,
    invocation: 'inv',
    timeoutMs: 0,
    ...over,
  };
}

export const linux = offerOf([
  { key: 'OSFamily', value: 'linux' },
  { key: 'ISA', value: 'x86-64' },
]);
const ok: Any = { typeUrl: 'type.googleapis.com/remex.test.Result', value: Buffer.from('ok') };

/** Resolves with the job when a watch on s sees it reach the stage. */
export function reaches(s: Scheduler, name: string, stage: Stage): Promise<Job> {
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
export async function holding(s: Scheduler): Promise<void> {
  while (s.heldPollCount === 0) await new Promise((r) => setTimeout(r, 2));
}

export const pending = (view: SessionView) => view.leases.find((l) => l.state === LeaseState.PENDING);

/** Completes the bot's current lease, alternating over `via`, and returns the name of each job it ran. */
async function drain(via: Scheduler[], first: SessionView, count: number): Promise<string[]> {
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

export function schedulerContract(label: string, open: OpenReplicas): void {
  describe(`Scheduler on ${label}: lifecycle`, () => {
    it('runs a job through QUEUED, EXECUTING and COMPLETED; settle runs first and what it returns is recorded', async () => {
      const { client, worker, settled } = await open();
      const job = await client.submit(request());
      expect(job).toMatchObject({ stage: Stage.QUEUED, queuedAt: START_TIME, attempts: 0 });
      const executing = reaches(client, job.name, Stage.EXECUTING);
      const completed = reaches(client, job.name, Stage.COMPLETED);
      const bot = await worker.createBotSession('', 'bot-1', linux);
      expect(bot.leases).toEqual([
        expect.objectContaining({
          state: LeaseState.PENDING,
          job: expect.objectContaining({ name: job.name }),
        }),
      ]);
      const lease = bot.leases[0]!;
      expect(
        pending(await worker.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0)),
      ).toBeUndefined();
      expect((await executing).startedAt).toBe(START_TIME);
      await worker.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }], 0);
      const done = await completed;
      expect(done.status).toEqual({ code: Code.OK, message: '' });
      expect(done.result).toEqual({ typeUrl: `${ok.typeUrl}+settled`, value: ok.value });
      expect(settled).toEqual([job.name]);
      // The session works on either replica: the bot may reach any of them next.
      expect((await client.updateBotSession(bot.name, [], 0)).leases).toEqual([]);
    });

    it('a completion reported several times at once completes the job once', async () => {
      const { client, worker, settled } = await open();
      const job = await client.submit(request());
      const bot = await worker.createBotSession('', 'bot', linux);
      const leased = (await client.get(job.name))!;
      const report = [{ id: bot.leases[0]!.id, state: LeaseState.COMPLETED, result: ok }];
      await Promise.all([client, worker, client, worker].map((s) => s.updateBotSession(bot.name, report, 0)));
      // One write after the lease: the completion.
      expect(await client.get(job.name)).toMatchObject({
        stage: Stage.COMPLETED,
        version: leased.version + 1,
      });
      expect(settled.length).toBeGreaterThanOrEqual(1);
      expect(new Set(settled)).toEqual(new Set([job.name]));
    });

    it('records the status a worker reports with its result', async () => {
      const { client, worker } = await open();
      const job = await client.submit(request());
      const bot = await worker.createBotSession('', 'bot', linux);
      const status = { code: Code.DEADLINE_EXCEEDED, message: 'timed out' };
      await worker.updateBotSession(
        bot.name,
        [{ id: bot.leases[0]!.id, state: LeaseState.COMPLETED, result: ok, status }],
        0,
      );
      expect(await client.get(job.name)).toMatchObject({ stage: Stage.COMPLETED, status });
    });

    it('records cache hits as completed operations, lists oldest first and deletes', async () => {
      const { client, worker } = await open();
      const hit = await client.recordCached(request(), ok);
      expect(hit).toMatchObject({
        stage: Stage.COMPLETED,
        cachedResult: true,
        result: ok,
        status: { code: Code.OK },
      });
      const queued = await worker.submit(request());
      expect((await client.list()).map((j) => j.name)).toEqual([hit.name, queued.name]);
      await worker.delete(hit.name);
      expect(await client.get(hit.name)).toBeUndefined();
      await expect(client.delete(hit.name)).rejects.toMatchObject({
        code: Code.NOT_FOUND,
        message: `operation ${hit.name} does not exist`,
      });
      // Deleting does not cancel: an operation in flight is refused and keeps its place.
      await expect(client.delete(queued.name)).rejects.toMatchObject({
        code: Code.FAILED_PRECONDITION,
        message: `operation ${queued.name} is still in flight; DeleteOperation does not cancel it: CancelOperation first, or delete it once done`,
      });
      expect((await worker.get(queued.name))?.stage).toBe(Stage.QUEUED);
    });

    it('forgets finished operations after the retention period', async () => {
      const { client, worker, advance } = await open();
      const job = await client.submit(request());
      await client.cancel(job.name);
      advance(599_000);
      await worker.sweep();
      expect(await client.get(job.name)).toBeDefined();
      advance(2_000);
      await worker.sweep();
      expect(await client.get(job.name)).toBeUndefined();
    });
  });

  describe(`Scheduler on ${label}: dispatch`, () => {
    it('matches platform properties, multi-valued keys included', async () => {
      const { client, worker } = await open();
      const wantsGpu = await client.submit(request({ platform: [{ name: 'gpu', value: 'yes' }] }));
      const wants32 = await client.submit(request({ platform: [{ name: 'ISA', value: 'x86-32' }] }));
      const plain = await worker.createBotSession('', 'plain', linux);
      expect(plain.leases).toEqual([]);
      const multi = await worker.createBotSession(
        '',
        'multi',
        offerOf([
          { key: 'ISA', value: 'x86-64' },
          { key: 'ISA', value: 'x86-32' },
        ]),
      );
      expect(multi.leases[0]?.job.name).toBe(wants32.name);
      const gpu = await worker.createBotSession('', 'gpu', offerOf([{ key: 'gpu', value: 'yes' }]));
      expect(gpu.leases[0]?.job.name).toBe(wantsGpu.name);
    });

    it('gives a bot only jobs of its own instance', async () => {
      const { client, worker } = await open();
      const other = await client.submit(request({ instance: 'other' }));
      expect((await worker.createBotSession('', 'main-bot', linux)).leases).toEqual([]);
      expect((await worker.createBotSession('other', 'other-bot', linux)).leases[0]?.job.name).toBe(
        other.name,
      );
      expect(other.name).toMatch(/^other\/operations\//);
    });

    it('runs lower priority values first, FIFO within a priority', async () => {
      const { client, worker } = await open();
      const late = await client.submit(request({ priority: 5 }));
      const first = await worker.submit(request({ priority: -1 }));
      const second = await client.submit(request({ priority: -1 }));
      const bot = await worker.createBotSession('', 'bot', linux);
      expect(await drain([client, worker], bot, 3)).toEqual([first.name, second.name, late.name]);
    });

    it('shares the queue fairly between tool invocations', async () => {
      const { client, worker } = await open();
      const big: Job[] = [];
      for (let i = 0; i < 5; i++) big.push(await client.submit(request({ invocation: 'big-build' })));
      const small = await client.submit(request({ invocation: 'small-build' }));
      const bot = await worker.createBotSession('', 'bot', linux);
      // The small build's only job runs second, not after all five of the big one.
      expect(await drain([worker, client], bot, 3)).toEqual([big[0]!.name, small.name, big[1]!.name]);
    });

    it('merges identical jobs in flight and raises the priority, but not jobs without a merge key', async () => {
      const { client, worker } = await open();
      const req = request({ priority: 5 });
      const first = await client.submit(req);
      const joined = await worker.submit({ ...req, invocation: 'other', priority: 1 });
      expect(joined.name).toBe(first.name);
      expect((await client.get(first.name))?.priority).toBe(1);
      expect((await worker.submit({ ...req, mergeKey: undefined })).name).not.toBe(first.name);
      // Submitted at once, one operation still.
      const racing = request();
      const names = await Promise.all([client, worker, client, worker].map((s) => s.submit(racing)));
      expect(new Set(names.map((j) => j.name)).size).toBe(1);
      // Once it finished, the same job runs anew.
      await client.cancel(first.name);
      expect((await worker.submit(req)).name).not.toBe(first.name);
    });

    it('wakes a long-polling bot when work arrives; a held session does not expire', async () => {
      const { client, worker, advance } = await open();
      const bot = await worker.createBotSession('', 'bot', linux);
      const poll = worker.updateBotSession(bot.name, [], 60_000);
      await holding(worker);
      // Past the session timeout, but the bot is held: a sweep must not expire it.
      advance(61_000);
      await client.sweep();
      const job = await client.submit(request());
      const answer = await poll;
      expect(answer.leases[0]).toMatchObject({ state: LeaseState.PENDING, job: { name: job.name } });
      expect(answer.expireAt).toBe(START_TIME + 61_000 + 60_000);
    });

    it('gives no new lease to a bot that is not accepting work, and does not hold it', async () => {
      const { client, worker } = await open();
      const bot = await worker.createBotSession('', 'bot', linux);
      await client.submit(request());
      const answer = await worker.updateBotSession(bot.name, [], 60_000, undefined, false);
      expect(answer.leases).toEqual([]);
      expect(worker.heldPollCount).toBe(0);
    });

    it('bots polling at once never get the same job: each is leased exactly once', async () => {
      const { client, worker } = await open();
      const jobs = await Promise.all(
        Array.from({ length: 40 }, (_, i) =>
          (i % 2 ? client : worker).submit(request({ invocation: `inv${i % 3}` })),
        ),
      );
      const stop = new AbortController();
      void Promise.all(jobs.map((j) => reaches(client, j.name, Stage.COMPLETED))).then(() => stop.abort());
      const bot = async (s: Scheduler, botId: string) => {
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
        await Promise.all(Array.from({ length: 8 }, (_, i) => bot(i % 2 ? client : worker, `bot-${i}`)))
      ).flat();
      expect(taken.sort()).toEqual(jobs.map((j) => j.name).sort());
      expect((await client.list()).every((j) => j.stage === Stage.COMPLETED && j.attempts === 0)).toBe(true);
    });
  });

  describe(`Scheduler on ${label}: cancellation`, () => {
    it('cancels a queued job, and wakes the long-polling bot of a running one with its lease CANCELLED', async () => {
      const { client, worker, settled } = await open();
      const queued = await client.submit(request({ priority: 9 }));
      const running = await client.submit(request());
      const bot = await worker.createBotSession('', 'bot', linux);
      const lease = bot.leases[0]!;
      expect(lease.job.name).toBe(running.name);
      await worker.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
      expect((await client.cancel(queued.name)).status?.code).toBe(Code.CANCELLED);
      const poll = worker.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 60_000);
      await holding(worker);
      expect(await client.cancel(running.name)).toMatchObject({
        stage: Stage.COMPLETED,
        cancelRequested: true,
        status: { code: Code.CANCELLED, message: 'the operation was cancelled' },
      });
      const answer = await poll;
      expect(answer.leases).toEqual([expect.objectContaining({ id: lease.id, state: LeaseState.CANCELLED })]);
      // A late completion of the cancelled lease changes nothing, and the bot is told only once.
      const after = await client.updateBotSession(
        bot.name,
        [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
        0,
      );
      expect(after.leases).toEqual([]);
      expect((await worker.get(running.name))?.status?.code).toBe(Code.CANCELLED);
      expect(settled).toEqual([]);
      // Cancelling again, or a job that does not exist.
      expect((await client.cancel(running.name)).status?.code).toBe(Code.CANCELLED);
      await expect(client.cancel('operations/nope')).rejects.toMatchObject({
        code: Code.NOT_FOUND,
        message: 'operation operations/nope does not exist',
      });
    });
  });

  describe(`Scheduler on ${label}: lost workers`, () => {
    it('requeues the lease of an expired bot session, then fails after max attempts with UNAVAILABLE', async () => {
      const { client, worker, advance, requeued } = await open({ maxAttempts: 2 });
      const job = await client.submit(request());
      const first = await client.createBotSession('', 'bot-1', linux);
      expect(first.leases[0]?.job.name).toBe(job.name);
      advance(61_000);
      await worker.sweep();
      expect(await client.get(job.name)).toMatchObject({ stage: Stage.QUEUED, attempts: 1 });
      await expect(worker.updateBotSession(first.name, [], 0)).rejects.toMatchObject({
        code: Code.NOT_FOUND,
        message: `bot session ${first.name} is unknown or expired; create a new one`,
      });
      const second = await worker.createBotSession('', 'bot-2', linux);
      expect(second.leases[0]?.job.name).toBe(job.name);
      advance(61_000);
      await client.sweep();
      expect(await worker.get(job.name)).toMatchObject({
        stage: Stage.COMPLETED,
        status: {
          code: Code.UNAVAILABLE,
          message: 'the action lost its worker 2 times (last: bot session of bot-2 expired); giving up',
        },
      });
      expect(requeued).toEqual(['bot session of bot-1 expired', 'bot session of bot-2 expired']);
    });

    it('sweeps running at once expire a session exactly once', async () => {
      const { client, worker, advance, requeued } = await open({ maxAttempts: 5 });
      const job = await client.submit(request());
      await worker.createBotSession('', 'bot', linux);
      advance(61_000);
      await Promise.all([client.sweep(), worker.sweep(), client.sweep(), worker.sweep()]);
      expect(await client.get(job.name)).toMatchObject({ stage: Stage.QUEUED, attempts: 1 });
      expect(requeued).toEqual(['bot session of bot expired']);
    });

    it('a bot that registers again replaces its old session and its lease is requeued', async () => {
      const { client, worker, requeued } = await open();
      const job = await client.submit(request());
      const old = await client.createBotSession('', 'bot', linux);
      expect(old.leases[0]?.job.name).toBe(job.name);
      const poll = client
        .updateBotSession(old.name, [{ id: old.leases[0]!.id, state: LeaseState.ACTIVE }], 60_000)
        .catch((err: unknown) => err);
      await holding(client);
      const fresh = await worker.createBotSession('', 'bot', linux);
      expect(fresh.name).not.toBe(old.name);
      expect(fresh.leases[0]?.job).toMatchObject({ name: job.name, attempts: 1 });
      expect(requeued).toEqual(['bot bot registered again']);
      // The old session's held poll ends at once.
      expect(await poll).toMatchObject({
        code: Code.NOT_FOUND,
        message: `bot session ${old.name} was replaced or expired while polling`,
      });
    });

    it('a lease the bot hands back runs elsewhere', async () => {
      const { client, worker, requeued } = await open();
      const job = await client.submit(request());
      const leaving = await worker.createBotSession('', 'leaving', linux);
      const lease = leaving.leases[0]!;
      const given = await worker.updateBotSession(
        leaving.name,
        [{ id: lease.id, state: LeaseState.CANCELLED }],
        0,
        undefined,
        false,
      );
      expect(given.leases).toEqual([]);
      expect(requeued).toEqual(['worker leaving returned the lease']);
      const other = await client.createBotSession('', 'other', linux);
      expect(other.leases[0]?.job).toMatchObject({ name: job.name, attempts: 1, stage: Stage.QUEUED });
    });

    it('requeues a lease whose session is gone without it (a replica stopped between the two)', async () => {
      const { client, worker, store, advance, requeued } = await open();
      const job = await client.submit(request());
      const bot = await worker.createBotSession('', 'bot', linux);
      advance(61_000);
      // The session is deleted, but nobody requeues its lease.
      expect((await store.expireSessions(START_TIME + 61_000)).map((s) => s.name)).toEqual([bot.name]);
      expect(await client.get(job.name)).toMatchObject({ leaseId: bot.leases[0]!.id });
      // The first sweep to find it orphaned leaves it to whoever deleted the session; the next requeues it.
      await worker.sweep();
      expect(await client.get(job.name)).toMatchObject({ leaseId: bot.leases[0]!.id, attempts: 0 });
      await worker.sweep();
      expect(await client.get(job.name)).toMatchObject({
        stage: Stage.QUEUED,
        attempts: 1,
        leaseId: undefined,
      });
      expect(requeued).toEqual([`bot session ${bot.name} is gone`]);
    });
  });

  describe(`Scheduler on ${label}: unschedulable jobs`, () => {
    it('fails a job no worker can run with FAILED_PRECONDITION naming the properties', async () => {
      const { client, worker, advance } = await open();
      await worker.createBotSession('', 'bot', linux);
      const job = await client.submit(request({ platform: [{ name: 'OSFamily', value: 'windows' }] }));
      advance(29_000);
      await worker.sweep();
      expect((await client.get(job.name))?.stage).toBe(Stage.QUEUED);
      advance(2_000);
      await Promise.all([client.sweep(), worker.sweep()]);
      expect(await client.get(job.name)).toMatchObject({
        stage: Stage.COMPLETED,
        status: {
          code: Code.FAILED_PRECONDITION,
          message: 'no worker matches the platform properties OSFamily=windows (requested: OSFamily=windows)',
        },
      });
    });

    it('keeps a queued job waiting while a matching worker joins in time', async () => {
      const { client, worker, advance } = await open();
      const job = await client.submit(request({ platform: [{ name: 'pool', value: 'big' }] }));
      expect((await client.get(job.name))?.unmatchedSince).toBe(START_TIME);
      advance(20_000);
      await client.sweep();
      const bot = await worker.createBotSession('', 'bot', offerOf([{ key: 'pool', value: 'other' }]));
      expect(bot.leases).toEqual([]);
      const big = await worker.createBotSession('', 'big', offerOf([{ key: 'pool', value: 'big' }]));
      expect(big.leases[0]?.job.name).toBe(job.name);
      advance(20_000);
      await client.sweep();
      expect(await client.get(job.name)).toMatchObject({ stage: Stage.QUEUED, unmatchedSince: undefined });
    });
  });

  describe(`Scheduler on ${label}: store invariants`, () => {
    it('refuses a write based on an older version, and a second occupant of a bot session', async () => {
      const { client, worker, store } = await open();
      const a = await client.submit(request());
      const { name } = await client.submit(request());
      const bot = await worker.createBotSession('', 'bot', linux);
      expect(bot.leases[0]?.job.name).toBe(a.name);
      const b = (await store.get(name))!;
      expect(await store.update({ ...b, priority: 7 }, [])).toMatchObject({
        priority: 7,
        version: b.version + 1,
      });
      // Based on the version before that write: refused.
      expect(await store.update({ ...b, priority: 8 }, [])).toBe('changed');
      const current = (await store.get(b.name))!;
      expect(
        await store.claim(
          { ...current, leaseId: 'second', leaseState: LeaseState.PENDING, botSession: bot.name },
          [],
        ),
      ).toBe('busy');
      expect(await store.get(b.name)).toEqual(current);
    });
  });

  describe(`Scheduler on ${label}: shutdown`, () => {
    it('close() answers held polls at once', async () => {
      const { worker } = await open();
      const bot = await worker.createBotSession('', 'bot', linux);
      const poll = worker.updateBotSession(bot.name, [], 60_000);
      await holding(worker);
      await worker.close();
      expect((await poll).leases).toEqual([]);
    });
  });
}
