import { describe, expect, it } from 'vitest';
import { SHA256 } from '../common/digest.js';
import { Code } from '../common/status.js';
import { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { Stage, type Job } from './job.js';
import { offerOf } from './platform.js';
import { LeaseState, Scheduler, type SubmitRequest } from './scheduler.js';
import { MemorySchedulerStore } from './scheduler-store.js';

function setup(overrides: Partial<ConstructorParameters<typeof Scheduler>[0]> = {}) {
  let now = 1_000_000;
  let id = 0;
  const cached: string[] = [];
  const scheduler = new Scheduler({
    now: () => now,
    newId: () => `id${++id}`,
    store: new MemorySchedulerStore(),
    botSessionTimeoutMs: 60_000,
    maxAttempts: 3,
    unschedulableTimeoutMs: 30_000,
    completedRetentionMs: 600_000,
    onSuccess: async (job) => void cached.push(job.name),
    ...overrides,
  });
  return { scheduler, cached, advance: (ms: number) => (now += ms) };
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

/** Takes the next lease of a bot without waiting. */
async function take(s: Scheduler, session: string) {
  const view = await s.updateBotSession(session, [], 0);
  return view.leases.find((l) => l.state === LeaseState.PENDING);
}

describe('Scheduler', () => {
  it('runs a job through QUEUED, EXECUTING and COMPLETED and caches a success', async () => {
    const { scheduler, cached } = setup();
    const stages: Stage[] = [];
    const job = scheduler.submit(request());
    scheduler.watch(job.name, (j) => stages.push(j.stage));
    const bot = scheduler.createBotSession('', 'bot-1', linux);
    expect(bot.leases).toHaveLength(1);
    const lease = bot.leases[0]!;
    await scheduler.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    await scheduler.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
    expect(stages).toEqual([Stage.EXECUTING, Stage.COMPLETED]);
    expect(scheduler.get(job.name)?.status?.code).toBe(Code.OK);
    expect(cached).toEqual([job.name]);
  });

  it('does not cache failures or do_not_cache actions', async () => {
    const { scheduler, cached } = setup();
    const failing = scheduler.submit(request());
    const uncached = scheduler.submit(request({ doNotCache: true }));
    const bot = scheduler.createBotSession('', 'bot-1', linux);
    let lease = bot.leases[0]!;
    await scheduler.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ActionResult.fromPartial({ exitCode: 1 }) }],
      0,
    );
    lease = (await take(scheduler, bot.name))!;
    await scheduler.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
    expect(scheduler.get(failing.name)?.stage).toBe(Stage.COMPLETED);
    expect(scheduler.get(uncached.name)?.stage).toBe(Stage.COMPLETED);
    expect(cached).toEqual([]);
  });

  it('matches platform properties, multi-valued keys included', () => {
    const { scheduler } = setup();
    const wantsGpu = scheduler.submit(request({ platform: [{ name: 'gpu', value: 'yes' }] }));
    const wants32 = scheduler.submit(request({ platform: [{ name: 'ISA', value: 'x86-32' }] }));
    const plain = scheduler.createBotSession('', 'plain', linux);
    expect(plain.leases).toEqual([]);
    const multi = scheduler.createBotSession(
      '',
      'multi',
      offerOf([
        { key: 'ISA', value: 'x86-64' },
        { key: 'ISA', value: 'x86-32' },
      ]),
    );
    expect(multi.leases[0]?.job.name).toBe(wants32.name);
    const gpu = scheduler.createBotSession('', 'gpu', offerOf([{ key: 'gpu', value: 'yes' }]));
    expect(gpu.leases[0]?.job.name).toBe(wantsGpu.name);
  });

  it('runs lower priority values first, FIFO within a priority', async () => {
    const { scheduler } = setup();
    const late = scheduler.submit(request({ priority: 5 }));
    const first = scheduler.submit(request({ priority: -1 }));
    const second = scheduler.submit(request({ priority: -1 }));
    const bot = scheduler.createBotSession('', 'bot', linux);
    const order = [bot.leases[0]!.job.name];
    for (let i = 0; i < 2; i++) {
      const current = (await scheduler.updateBotSession(bot.name, [], 0)).leases[0]!;
      await scheduler.updateBotSession(
        bot.name,
        [{ id: current.id, state: LeaseState.COMPLETED, result: ok }],
        0,
      );
      order.push((await take(scheduler, bot.name))!.job.name);
    }
    expect(order).toEqual([first.name, second.name, late.name]);
  });

  it('shares the queue fairly between tool invocations', async () => {
    const { scheduler } = setup();
    const big = Array.from({ length: 5 }, () => scheduler.submit(request({ invocation: 'big-build' })));
    const small = scheduler.submit(request({ invocation: 'small-build' }));
    const bot = scheduler.createBotSession('', 'bot', linux);
    const order = [bot.leases[0]!.job.name];
    for (let i = 0; i < 2; i++) {
      const current = (await scheduler.updateBotSession(bot.name, [], 0)).leases[0]!;
      await scheduler.updateBotSession(
        bot.name,
        [{ id: current.id, state: LeaseState.COMPLETED, result: ok }],
        0,
      );
      order.push((await take(scheduler, bot.name))!.job.name);
    }
    // The small build's only action runs second, not after all five of the big one.
    expect(order).toEqual([big[0]!.name, small.name, big[1]!.name]);
  });

  it('merges identical cacheable actions in flight, but not do_not_cache ones', () => {
    const { scheduler } = setup();
    const req = request();
    const a = scheduler.submit(req);
    const b = scheduler.submit({ ...req, invocation: 'other' });
    expect(b.name).toBe(a.name);
    const c = scheduler.submit({ ...req, doNotCache: true });
    expect(c.name).not.toBe(a.name);
  });

  it('cancels a queued job, and tells the worker to stop a running one', async () => {
    const { scheduler } = setup();
    const queued = scheduler.submit(request({ priority: 9 }));
    const running = scheduler.submit(request());
    const bot = scheduler.createBotSession('', 'bot', linux);
    const lease = bot.leases[0]!;
    expect(lease.job.name).toBe(running.name);
    await scheduler.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 0);
    expect(scheduler.cancel(queued.name).status?.code).toBe(Code.CANCELLED);
    // The bot is long-polling with its lease running; the cancel wakes it.
    const poll = scheduler.updateBotSession(bot.name, [{ id: lease.id, state: LeaseState.ACTIVE }], 60_000);
    expect(scheduler.cancel(running.name).status?.code).toBe(Code.CANCELLED);
    const answer = await poll;
    expect(answer.leases).toEqual([expect.objectContaining({ id: lease.id, state: LeaseState.CANCELLED })]);
    // A late completion of the cancelled lease changes nothing.
    await scheduler.updateBotSession(
      bot.name,
      [{ id: lease.id, state: LeaseState.COMPLETED, result: ok }],
      0,
    );
    expect(scheduler.get(running.name)?.status?.code).toBe(Code.CANCELLED);
  });

  it('requeues the lease of an expired bot session, then fails after max attempts', async () => {
    const { scheduler, advance } = setup({ maxAttempts: 2 });
    const job = scheduler.submit(request());
    const first = scheduler.createBotSession('', 'bot-1', linux);
    expect(first.leases[0]?.job.name).toBe(job.name);
    advance(61_000);
    scheduler.sweep();
    expect(scheduler.get(job.name)?.stage).toBe(Stage.QUEUED);
    await expect(scheduler.updateBotSession(first.name, [], 0)).rejects.toMatchObject({
      code: Code.NOT_FOUND,
    });
    const second = scheduler.createBotSession('', 'bot-2', linux);
    expect(second.leases[0]?.job.name).toBe(job.name);
    advance(61_000);
    scheduler.sweep();
    const failed = scheduler.get(job.name)!;
    expect(failed.stage).toBe(Stage.COMPLETED);
    expect(failed.status).toMatchObject({
      code: Code.UNAVAILABLE,
      message: expect.stringMatching(/lost its worker 2 times/),
    });
  });

  it('a bot that registers again replaces its old session and requeues its lease', () => {
    const { scheduler } = setup();
    const job = scheduler.submit(request());
    const old = scheduler.createBotSession('', 'bot', linux);
    expect(old.leases[0]?.job.name).toBe(job.name);
    const fresh = scheduler.createBotSession('', 'bot', linux);
    expect(fresh.name).not.toBe(old.name);
    expect(fresh.leases[0]?.job.name).toBe(job.name);
    expect(scheduler.sessionCount).toBe(1);
  });

  it('fails an action no worker can run with FAILED_PRECONDITION naming the properties', () => {
    const { scheduler, advance } = setup();
    scheduler.createBotSession('', 'bot', linux);
    const job = scheduler.submit(request({ platform: [{ name: 'OSFamily', value: 'windows' }] }));
    advance(29_000);
    scheduler.sweep();
    expect(scheduler.get(job.name)?.stage).toBe(Stage.QUEUED);
    advance(2_000);
    scheduler.sweep();
    const failed: Job = scheduler.get(job.name)!;
    expect(failed.stage).toBe(Stage.COMPLETED);
    expect(failed.status).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: expect.stringMatching(/no worker matches the platform properties OSFamily=windows/),
    });
  });

  it('keeps a queued job waiting while a matching worker joins in time', () => {
    const { scheduler, advance } = setup();
    const job = scheduler.submit(request({ platform: [{ name: 'pool', value: 'big' }] }));
    advance(20_000);
    scheduler.sweep();
    const bot = scheduler.createBotSession('', 'bot', offerOf([{ key: 'pool', value: 'big' }]));
    expect(bot.leases[0]?.job.name).toBe(job.name);
  });

  it('wakes a long-polling bot when work arrives', async () => {
    const { scheduler } = setup();
    const bot = scheduler.createBotSession('', 'bot', linux);
    const poll = scheduler.updateBotSession(bot.name, [], 60_000);
    const job = scheduler.submit(request());
    const answer = await poll;
    expect(answer.leases[0]).toMatchObject({ state: LeaseState.PENDING, job: { name: job.name } });
  });

  it('forgets finished operations after the retention period', async () => {
    const { scheduler, advance } = setup();
    const job = scheduler.submit(request());
    scheduler.cancel(job.name);
    advance(599_000);
    scheduler.sweep();
    expect(scheduler.get(job.name)).toBeDefined();
    advance(2_000);
    scheduler.sweep();
    expect(scheduler.get(job.name)).toBeUndefined();
  });
});

describe('Scheduler and bot health', () => {
  it('gives no new lease to a bot that is not accepting work, and does not hold it', async () => {
    const { scheduler } = setup();
    const bot = scheduler.createBotSession('', 'bot', linux);
    scheduler.submit(request());
    const answer = await scheduler.updateBotSession(bot.name, [], 60_000, undefined, false);
    expect(answer.leases).toEqual([]);
  });

  it('close() answers held polls at once', async () => {
    const { scheduler } = setup();
    const bot = scheduler.createBotSession('', 'bot', linux);
    const poll = scheduler.updateBotSession(bot.name, [], 60_000);
    scheduler.close();
    expect((await poll).leases).toEqual([]);
  });
});

describe('Scheduler results', () => {
  it('stamps the queued time on the result of every finished job, failed ones too', async () => {
    const { scheduler } = setup();
    const job = scheduler.submit(request());
    const bot = scheduler.createBotSession('', 'bot', linux);
    const failed = ActionResult.fromPartial({ exitCode: 2, executionMetadata: { worker: 'bot' } });
    await scheduler.updateBotSession(
      bot.name,
      [{ id: bot.leases[0]!.id, state: LeaseState.COMPLETED, result: failed }],
      0,
    );
    expect(scheduler.get(job.name)?.result?.executionMetadata?.queuedTimestamp).toEqual({
      seconds: 1000,
      nanos: 0,
    });
  });

  it('refuses to delete an operation in flight (deleting does not cancel) and deletes it once done', async () => {
    const { scheduler } = setup();
    const job = scheduler.submit(request());
    expect(() => scheduler.delete(job.name)).toThrow(/still in flight; DeleteOperation does not cancel it/);
    expect(scheduler.get(job.name)?.stage).toBe(Stage.QUEUED);
    scheduler.cancel(job.name);
    scheduler.delete(job.name);
    expect(scheduler.get(job.name)).toBeUndefined();
  });
});
