import {
  Metadata,
  Server,
  ServerCredentials,
  credentials,
  status,
  type ServerUnaryCall,
  type sendUnaryData,
} from '@grpc/grpc-js';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Code } from '../../src/common/status.js';
import { ActionResult } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import {
  BotStatus,
  BotsClient,
  BotsService,
  LeaseState,
  type BotSession,
  type CreateBotSessionRequest,
  type Lease,
  type UpdateBotSessionRequest,
} from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';
import type { LeaseOutcome } from './action-executor.js';
import { Backoff } from './backoff.js';
import { BotSlot } from './bot-slot.js';
import { ACTION_RESULT_TYPE_URL } from './lease-payload.js';

// The slot's protocol logic against a small scripted Bots server (the real one is
// exercised end to end in worker.test.ts).

interface FakeSession {
  name: string;
  botId: string;
  lease?: Lease;
  cancelled?: Lease;
  wake?: () => void;
}

/** A Bots server that holds polls like remex does, with hooks to assign, cancel and expire. */
class FakeBots {
  server = new Server();
  port = 0;
  sessions = new Map<string, FakeSession>();
  creates: CreateBotSessionRequest[] = [];
  updates: UpdateBotSessionRequest[] = [];
  completed: Lease[] = [];
  givenBack: Lease[] = [];
  holdMs = 3000;
  private n = 0;

  async start(port = 0): Promise<void> {
    this.server.addService(BotsService, {
      createBotSession: (
        call: ServerUnaryCall<CreateBotSessionRequest, BotSession>,
        cb: sendUnaryData<BotSession>,
      ) => {
        this.creates.push(call.request);
        for (const [name, s] of this.sessions)
          if (s.botId === call.request.botSession!.botId) this.sessions.delete(name);
        const s: FakeSession = { name: `bots/${++this.n}`, botId: call.request.botSession!.botId };
        this.sessions.set(s.name, s);
        cb(null, this.view(s, call.request.botSession!));
      },
      updateBotSession: (
        call: ServerUnaryCall<UpdateBotSessionRequest, BotSession>,
        cb: sendUnaryData<BotSession>,
      ) => {
        void this.update(call, cb);
      },
    });
    this.port = await new Promise((resolve, reject) =>
      this.server.bindAsync(`127.0.0.1:${port}`, ServerCredentials.createInsecure(), (err, p) =>
        err ? reject(err) : resolve(p),
      ),
    );
  }

  stop(): void {
    for (const s of this.sessions.values()) s.wake?.();
    this.server.forceShutdown();
  }

  private async update(
    call: ServerUnaryCall<UpdateBotSessionRequest, BotSession>,
    cb: sendUnaryData<BotSession>,
  ) {
    const req = call.request;
    this.updates.push(req);
    const s = this.sessions.get(req.name);
    if (!s)
      return cb({
        code: status.NOT_FOUND,
        details: `bot session ${req.name} is unknown`,
        metadata: new Metadata(),
      });
    for (const l of req.botSession!.leases) {
      if (!s.lease || s.lease.id !== l.id) continue;
      if (l.state === LeaseState.ACTIVE) s.lease = { ...s.lease, state: LeaseState.ACTIVE };
      if (l.state === LeaseState.COMPLETED) {
        this.completed.push(l);
        s.lease = undefined;
      }
      if (l.state === LeaseState.CANCELLED) {
        this.givenBack.push(l);
        s.lease = undefined;
      }
    }
    if (!s.cancelled && s.lease?.state !== LeaseState.PENDING) {
      await new Promise<void>((resolve) => {
        // Like remex: answer a second before the client's deadline.
        const deadline = call.getDeadline();
        const untilDeadline = (deadline instanceof Date ? deadline.getTime() : deadline) - Date.now() - 1000;
        const timer = setTimeout(resolve, Math.max(0, Math.min(this.holdMs, untilDeadline)));
        s.wake = () => {
          clearTimeout(timer);
          resolve();
        };
        call.once('cancelled', s.wake);
      });
      s.wake = undefined;
    }
    if (call.cancelled) return;
    if (!this.sessions.has(req.name)) {
      return cb({ code: status.NOT_FOUND, details: 'session replaced', metadata: new Metadata() });
    }
    const view = this.view(s, req.botSession!);
    s.cancelled = undefined;
    cb(null, view);
  }

  private view(s: FakeSession, reported: BotSession): BotSession {
    return {
      ...reported,
      name: s.name,
      leases: [...(s.cancelled ? [s.cancelled] : []), ...(s.lease ? [s.lease] : [])],
    };
  }

  session(botId: string): FakeSession {
    const s = [...this.sessions.values()].find((x) => x.botId === botId);
    if (!s) throw new Error(`no session for ${botId}`);
    return s;
  }

  assign(botId: string, id: string): void {
    const s = this.session(botId);
    s.lease = { ...lease(id), state: LeaseState.PENDING };
    s.wake?.();
  }

  cancel(botId: string): void {
    const s = this.session(botId);
    s.cancelled = { ...s.lease!, state: LeaseState.CANCELLED };
    s.lease = undefined;
    s.wake?.();
  }

  /** Drops the lease from the session without a word, as a server that gave it elsewhere would. */
  forget(botId: string): void {
    const s = this.session(botId);
    s.lease = undefined;
    s.wake?.();
  }

  expire(botId: string): void {
    const s = this.session(botId);
    this.sessions.delete(s.name);
    s.wake?.();
  }
}

function lease(id: string): Lease {
  return {
    id,
    payload: {
      typeUrl: 'type.googleapis.com/build.bazel.remote.execution.v2.Action',
      value: Buffer.alloc(0),
    },
    result: undefined,
    state: LeaseState.PENDING,
    status: undefined,
    requirements: undefined,
    expireTime: undefined,
    assignment: '',
    inlineAssignment: undefined,
  };
}

async function until(what: string, predicate: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A stand-in for the executor: each run waits until the test finishes it, or is aborted. */
class Runs {
  started: { lease: Lease; signal: AbortSignal; finish: (o: LeaseOutcome) => void }[] = [];
  run = (l: Lease, signal: AbortSignal) =>
    new Promise<LeaseOutcome>((resolve) => {
      this.started.push({ lease: l, signal, finish: resolve });
      signal.addEventListener('abort', () =>
        resolve({ status: { code: Code.CANCELLED, message: 'aborted', details: [] } }),
      );
    });
}

let fake: FakeBots;
let client: BotsClient;
let runs: Runs;
let slot: BotSlot | undefined;

beforeEach(async () => {
  fake = new FakeBots();
  await fake.start();
  client = new BotsClient(`127.0.0.1:${fake.port}`, credentials.createInsecure(), {
    'grpc.initial_reconnect_backoff_ms': 50,
    'grpc.max_reconnect_backoff_ms': 200,
  });
  runs = new Runs();
});

afterEach(async () => {
  await slot?.stop();
  slot = undefined;
  client.close();
  fake.stop();
});

function startSlot(botId = 'host-1-0') {
  slot = new BotSlot({
    bots: client,
    instanceName: 'main',
    botId,
    worker: {
      devices: [{ handle: botId, properties: [] }],
      properties: [{ key: 'OSFamily', value: 'linux' }],
      configs: [],
    },
    run: runs.run,
    log: pino({ level: 'silent' }),
    pollTimeoutMs: 5000,
    minIntervalMs: 50,
    backoff: new Backoff(20, 200),
  });
  slot.start();
  return slot;
}

const reportedStates = (leaseId: string) =>
  fake.updates.flatMap((u) => u.botSession!.leases.filter((l) => l.id === leaseId).map((l) => l.state));

describe('BotSlot', () => {
  it('creates a session with its bot id, worker properties and instance', async () => {
    startSlot('host-7-3');
    await until('a session exists', () => fake.creates.length === 1);
    const req = fake.creates[0]!;
    expect(req.parent).toBe('main');
    expect(req.botSession).toMatchObject({ botId: 'host-7-3', status: BotStatus.OK, leases: [] });
    expect(req.botSession!.worker!.properties).toEqual([{ key: 'OSFamily', value: 'linux' }]);
    await until('it polls', () => fake.updates.length >= 1);
    expect(fake.updates[0]!.name).toBe('bots/1');
  });

  it('reports a lease ACTIVE while it runs, then COMPLETED with its result, cutting the long poll short', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    fake.assign('host-1-0', 'L1');
    await until('the lease runs', () => runs.started.length === 1);
    await until('ACTIVE is reported', () => reportedStates('L1').includes(LeaseState.ACTIVE));
    expect(runs.started[0]!.signal.aborted).toBe(false);
    // The server now holds the poll (3 s); finishing must not wait for it.
    await new Promise((r) => setTimeout(r, 100));
    const finishedAt = Date.now();
    runs.started[0]!.finish({
      status: { code: Code.OK, message: '', details: [] },
      result: ActionResult.fromPartial({ exitCode: 3 }),
    });
    await until('COMPLETED is reported', () => fake.completed.length === 1);
    expect(Date.now() - finishedAt).toBeLessThan(1000);
    const done = fake.completed[0]!;
    expect(done.result!.typeUrl).toBe(ACTION_RESULT_TYPE_URL);
    expect(ActionResult.decode(done.result!.value).exitCode).toBe(3);
    expect(done.status).toEqual({ code: 0, message: '', details: [] });
    // The next lease is taken as well.
    fake.assign('host-1-0', 'L2');
    await until('the second lease runs', () => runs.started.length === 2);
  });

  it('aborts a lease the server marks CANCELLED, and does not report it completed', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    fake.assign('host-1-0', 'L1');
    await until('ACTIVE is reported', () => reportedStates('L1').includes(LeaseState.ACTIVE));
    fake.cancel('host-1-0');
    await until('the run is aborted', () => runs.started[0]!.signal.aborted);
    await new Promise((r) => setTimeout(r, 200));
    expect(reportedStates('L1')).not.toContain(LeaseState.COMPLETED);
    expect(slot!.runningLeases).toBe(0);
  });

  it('aborts a lease that disappears from the session', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    fake.assign('host-1-0', 'L1');
    await until('ACTIVE is reported', () => reportedStates('L1').includes(LeaseState.ACTIVE));
    fake.forget('host-1-0');
    await until('the run is aborted', () => runs.started[0]!.signal.aborted);
  });

  it('on NOT_FOUND drops its leases and creates a new session under the same bot id', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    fake.assign('host-1-0', 'L1');
    await until('ACTIVE is reported', () => reportedStates('L1').includes(LeaseState.ACTIVE));
    fake.expire('host-1-0');
    await until('a new session', () => fake.creates.length === 2);
    expect(fake.creates[1]!.botSession!.botId).toBe('host-1-0');
    expect(runs.started[0]!.signal.aborted).toBe(true);
    await until('polling the new session', () => fake.updates.some((u) => u.name === 'bots/2'));
  });

  it('reconnects with backoff when the server goes away and comes back on the same address', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    const port = fake.port;
    fake.stop();
    await new Promise((r) => setTimeout(r, 600)); // several failed attempts meanwhile
    fake = new FakeBots();
    await fake.start(port);
    // The restarted server does not know the old session: NOT_FOUND, then a new one.
    await until('a session on the new server', () => fake.creates.length === 1, 10_000);
    await until('polling again', () => fake.updates.some((u) => u.name === 'bots/1'));
    fake.assign('host-1-0', 'L9');
    await until('work flows again', () => runs.started.some((r) => r.lease.id === 'L9'));
  });

  it('on stop kills running leases and hands them back (CANCELLED) with status BOT_TERMINATING', async () => {
    startSlot();
    await until('polling', () => fake.updates.length >= 1);
    fake.assign('host-1-0', 'L1');
    await until('ACTIVE is reported', () => reportedStates('L1').includes(LeaseState.ACTIVE));
    await slot!.stop();
    expect(runs.started[0]!.signal.aborted).toBe(true);
    expect(fake.givenBack.map((l) => l.id)).toEqual(['L1']);
    expect(fake.updates.at(-1)!.botSession!.status).toBe(BotStatus.BOT_TERMINATING);
  });
});
