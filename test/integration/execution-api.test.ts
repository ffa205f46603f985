import { Metadata, status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ContentAddressableStorageService,
  ActionCacheService,
  ActionResult,
  GetActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { BotsService, type BotSession } from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';
import { OperationsService } from '../../src/gen/google/longrunning/operations.js';
import { Status } from '../../src/gen/google/rpc/status.js';
import { PreconditionFailure } from '../../src/gen/google/rpc/error_details.js';
import { digestOf, errorOf } from '../helpers/blobs.js';
import { clientsFor, executionClientsFor, unaryCall, type Clients } from '../helpers/clients.js';
import { collect, executeRequest, uploadAction } from '../helpers/execution.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

// The execution protocol end to end against the real server, with the test playing the
// worker over the Bots API (the real worker has its own end-to-end tests).

let remex: RemexProcess;
let c: Clients;
let x: ReturnType<typeof executionClientsFor>;

const QUEUED = 2;
const EXECUTING = 3;
const COMPLETED = 4;

beforeAll(async () => {
  remex = await startRemex({
    config: {
      execution: { keepalive: '300ms', botPoll: '2s', unschedulableTimeout: '1s', botSessionTimeout: '2s' },
    },
    args: ['--workers', '0'],
  });
  c = clientsFor(remex.address);
  x = executionClientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  x?.close();
  expect(await remex?.stop()).toBe(0);
});

async function createBot(botId: string, properties: { key: string; value: string }[] = []) {
  const session = await unaryCall(x.bots, BotsService.createBotSession, {
    parent: '',
    botSession: {
      name: '',
      botId,
      status: 1,
      worker: { devices: [], properties, configs: [] },
      leases: [],
      expireTime: undefined,
      version: '',
    },
  });
  return session;
}

function update(session: BotSession) {
  return unaryCall(x.bots, BotsService.updateBotSession, {
    name: session.name,
    botSession: session,
    updateMask: undefined,
  });
}

describe('Execution with a scripted bot', () => {
  it('streams QUEUED, EXECUTING, COMPLETED, caches the result and serves it as a cache hit next time', async () => {
    const { actionDigest } = await uploadAction(c, ['/bin/true', 'first']);
    const stream = collect(x.execution.execute(executeRequest({ actionDigest })));
    let bot = await createBot('bot-a');
    while (bot.leases.length === 0) bot = await update(bot);
    const lease = bot.leases[0]!;
    expect(lease.payload?.typeUrl).toBe('type.googleapis.com/build.bazel.remote.execution.v2.Action');
    lease.state = 2; // ACTIVE
    bot = await update(bot);
    const stdout = Buffer.from('hello from the bot\n');
    await unaryCall(c.cas, ContentAddressableStorageService.batchUpdateBlobs, {
      instanceName: '',
      digestFunction: 0,
      requests: [{ digest: digestOf(stdout), data: stdout, compressor: 0 }],
    });
    const result = ActionResult.fromPartial({ exitCode: 0, stdoutDigest: digestOf(stdout) });
    bot.leases = [
      {
        ...lease,
        state: 4,
        result: {
          typeUrl: 'type.googleapis.com/build.bazel.remote.execution.v2.ActionResult',
          value: Buffer.from(ActionResult.encode(result).finish()),
        },
        status: { code: 0, message: '', details: [] },
      },
    ];
    await update({ ...bot }).catch(() => undefined);
    const updates = await stream.done;
    expect(updates.map((u) => u.stage)).toEqual(expect.arrayContaining([QUEUED, EXECUTING, COMPLETED]));
    const last = updates.at(-1)!;
    expect(last.done).toBe(true);
    expect(last.response?.status?.code).toBe(0);
    expect(last.response?.result?.stdoutDigest).toEqual(digestOf(stdout));
    expect(last.response?.cachedResult).toBe(false);
    // The result is in the action cache...
    const cached = await unaryCall(
      c.actionCache,
      ActionCacheService.getActionResult,
      GetActionResultRequest.fromPartial({ actionDigest }),
    );
    expect(cached.stdoutDigest).toEqual(digestOf(stdout));
    // ...so executing again is a cache hit, without a worker.
    const again = await collect(x.execution.execute(executeRequest({ actionDigest }))).done;
    expect(again).toHaveLength(1);
    expect(again[0]).toMatchObject({ done: true, stage: COMPLETED, response: { cachedResult: true } });
  });

  it('sends keepalive updates while an action waits', async () => {
    const { actionDigest } = await uploadAction(c, ['/bin/true', 'waits'], {
      command: { platform: { properties: [{ name: 'pool', value: 'slow' }] } },
    });
    await createBot('slow-bot', [{ key: 'pool', value: 'other' }]);
    const updates: number[] = [];
    const call = x.execution.execute(executeRequest({ actionDigest }));
    const stream = collect(call, (u) => updates.push(u.stage));
    await new Promise((r) => setTimeout(r, 1000));
    // Queued and unchanged for a second: at least three messages with keepalive at 300 ms.
    expect(updates.length).toBeGreaterThanOrEqual(3);
    expect(updates.every((s) => s === QUEUED)).toBe(true);
    call.cancel();
    await stream.done.catch(() => undefined);
  });

  it('fails an action no worker can run with FAILED_PRECONDITION naming the property', async () => {
    const { actionDigest } = await uploadAction(c, ['/bin/true', 'never'], {
      command: { platform: { properties: [{ name: 'OSFamily', value: 'plan9' }] } },
    });
    await createBot('linux-bot', [{ key: 'OSFamily', value: 'linux' }]);
    const updates = await collect(x.execution.execute(executeRequest({ actionDigest }))).done;
    const last = updates.at(-1)!;
    expect(last.done).toBe(true);
    expect(last.response?.status?.code).toBe(status.FAILED_PRECONDITION);
    expect(last.response?.status?.message).toMatch(/OSFamily=plan9/);
  });

  it('cancels a queued operation through the Operations service', async () => {
    const { actionDigest } = await uploadAction(c, ['/bin/true', 'cancel me'], {
      command: { platform: { properties: [{ name: 'pool', value: 'nobody-yet' }] } },
    });
    await createBot('pool-bot', [{ key: 'pool', value: 'nobody-yet-either' }]);
    let name = '';
    const stream = collect(x.execution.execute(executeRequest({ actionDigest })), (u) => (name ||= u.name));
    while (!name) await new Promise((r) => setTimeout(r, 20));
    expect(name).toMatch(/^operations\/[0-9a-f-]+$/);
    const listed = await unaryCall(x.operations, OperationsService.listOperations, {
      name: 'operations',
      filter: 'stage=QUEUED',
      pageSize: 0,
      pageToken: '',
      returnPartialSuccess: false,
    });
    expect(listed.operations.map((o) => o.name)).toContain(name);
    await unaryCall(x.operations, OperationsService.cancelOperation, { name });
    const last = (await stream.done).at(-1)!;
    expect(last.response?.status?.code).toBe(status.CANCELLED);
    const got = await unaryCall(x.operations, OperationsService.getOperation, { name });
    expect(got.done).toBe(true);
    const waited = await unaryCall(x.operations, OperationsService.waitOperation, {
      name,
      timeout: undefined,
    });
    expect(waited.done).toBe(true);
    const again = await collect(x.execution.waitExecution({ name })).done;
    expect(again.at(-1)?.done).toBe(true);
    await unaryCall(x.operations, OperationsService.deleteOperation, { name });
    const gone = await errorOf(unaryCall(x.operations, OperationsService.getOperation, { name }));
    expect(gone.code).toBe(status.NOT_FOUND);
  });

  it('WaitOperation with a timeout beyond 2^31-1 ms (30 days) waits for completion instead of returning at once', async () => {
    const { actionDigest } = await uploadAction(c, ['/bin/true', 'wait long'], {
      command: { platform: { properties: [{ name: 'pool', value: 'nobody-yet-long' }] } },
    });
    await createBot('long-pool-bot', [{ key: 'pool', value: 'nobody-yet-long-either' }]);
    let name = '';
    const stream = collect(x.execution.execute(executeRequest({ actionDigest })), (u) => (name ||= u.name));
    while (!name) await new Promise((r) => setTimeout(r, 20));
    const waited = unaryCall(x.operations, OperationsService.waitOperation, {
      name,
      timeout: { seconds: 30 * 24 * 3600, nanos: 0 },
    });
    const early = await Promise.race([waited, new Promise((r) => setTimeout(() => r('still waiting'), 300))]);
    expect(early).toBe('still waiting');
    await unaryCall(x.operations, OperationsService.cancelOperation, { name });
    expect((await waited).done).toBe(true);
    await stream.done;
  });

  it('answers a missing action with FAILED_PRECONDITION and a MISSING violation', async () => {
    const absent = digestOf('no such action');
    const err = await errorOf(collect(x.execution.execute(executeRequest({ actionDigest: absent }))).done);
    expect(err.code).toBe(status.FAILED_PRECONDITION);
    const raw = (err.metadata as Metadata).get('grpc-status-details-bin')[0] as Buffer;
    const rich = Status.decode(raw);
    const failure = PreconditionFailure.decode(rich.details[0]!.value);
    expect(failure.violations[0]).toMatchObject({
      type: 'MISSING',
      subject: `blobs/${absent.hash}/${absent.sizeBytes}`,
    });
  });

  it.each([
    [
      'a malformed action digest',
      { actionDigest: { hash: 'nope', sizeBytes: 1 }, digestFunction: 1 },
      status.INVALID_ARGUMENT,
      /invalid hash/,
    ],
    [
      'an unknown instance',
      { instanceName: 'ghost', actionDigest: digestOf('x') },
      status.INVALID_ARGUMENT,
      /unknown instance name "ghost"/,
    ],
    [
      'a priority out of range',
      { actionDigest: digestOf('x'), executionPolicy: { priority: 5000 } },
      status.INVALID_ARGUMENT,
      /outside the supported range/,
    ],
  ])('rejects %s', async (_what, req, code, message) => {
    const err = await errorOf(collect(x.execution.execute(executeRequest(req as never))).done);
    expect(err.code).toBe(code);
    expect(err.details).toMatch(message);
  });

  it('answers WaitExecution for an unknown operation with NOT_FOUND', async () => {
    const err = await errorOf(collect(x.execution.waitExecution({ name: 'operations/unknown' })).done);
    expect(err.code).toBe(status.NOT_FOUND);
  });
});
