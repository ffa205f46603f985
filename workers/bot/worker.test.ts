import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/common/status.js';
import {
  Action,
  Command,
  ExecuteRequest,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { OperationsService } from '../../src/gen/google/longrunning/operations.js';
import { PreconditionFailure } from '../../src/gen/google/rpc/error_details.js';
import { executionClientsFor, unaryCall, type DeepPartial } from '../../test/helpers/clients.js';
import { collect, type OperationUpdate } from '../../test/helpers/execution.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { uploadDirectory } from '../../src/remote/directory-upload.js';
import { startWorker, type RunningWorker } from './worker.js';

// The worker end to end: the real `remex serve` (no embedded workers), startWorker in
// this process, and clients calling Execute / CancelOperation as Bazel would.

let remex: RemexProcess;
let worker: RunningWorker;
let cas: CasClient;
let x: ReturnType<typeof executionClientsFor>;
let dir: string;

const CONFIG = { execution: { botPoll: '5s', botSessionTimeout: '20s', unschedulableTimeout: '20s' } };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'remex-worker-e2e-'));
  await mkdir(join(dir, 'server'));
  remex = await startRemex({ config: CONFIG, dataDir: join(dir, 'server'), args: ['--workers', '0'] });
  cas = CasClient.connect(remex.address, { instanceName: '' });
  x = executionClientsFor(remex.address);
  worker = await startWorker({
    server: remex.address,
    instanceName: '',
    capacity: 2,
    properties: [{ key: 'pool', value: 'e2e' }],
    workDir: join(dir, 'worker'),
    name: 'e2e',
    log: pino({ level: 'silent' }),
  });
});

afterAll(async () => {
  await worker?.stop();
  expect(await readdir(join(dir, 'worker', 'exec'))).toEqual([]); // its scratch directories are gone
  cas?.close();
  x?.close();
  expect(await remex?.stop()).toBe(0);
  await rm(dir, { recursive: true, force: true });
});

async function put(data: Buffer): Promise<Digest> {
  const { digestOf } = await import('../../src/common/digest.js');
  const d = await digestOf(cas.digestFunction, data);
  await cas.upload([{ digest: d, data }]);
  return d;
}

/** Uploads inputs, Command and Action; returns the action digest. */
async function upload(
  command: DeepPartial<Command>,
  inputs: Record<string, string> = {},
  action: DeepPartial<Action> = {},
): Promise<Digest> {
  const src = await mkdtemp(join(dir, 'inputs-'));
  for (const [path, content] of Object.entries(inputs)) {
    await mkdir(join(src, path, '..'), { recursive: true });
    await writeFile(join(src, path), content);
  }
  const cmd = Command.fromPartial({
    environmentVariables: [{ name: 'PATH', value: '/usr/bin:/bin' }],
    ...command,
  });
  return put(
    Buffer.from(
      Action.encode(
        Action.fromPartial({
          commandDigest: await put(Buffer.from(Command.encode(cmd).finish())),
          inputRootDigest: await uploadDirectory(cas, src),
          ...action,
        }),
      ).finish(),
    ),
  );
}

function execute(actionDigest: Digest, onUpdate?: (u: OperationUpdate) => void) {
  return collect(
    x.execution.execute(ExecuteRequest.fromPartial({ actionDigest, skipCacheLookup: true })),
    onUpdate,
  ).done;
}

const text = async (d: Digest | undefined) => (await cas.readBlob(d!, 'blob')).toString();

describe('remex worker against remex serve', () => {
  it('runs an action: inputs, platform OSFamily=linux, outputs, stdout, metadata naming the bot', async () => {
    const actionDigest = await upload(
      {
        arguments: [
          'sh',
          '-c',
          'mkdir -p out/tree && tr a-z A-Z < src/in.txt > out/up.txt && echo sub > out/tree/f && echo done',
        ],
        outputPaths: ['out/tree', 'out/up.txt'],
        platform: { properties: [{ name: 'OSFamily', value: 'linux' }] },
      },
      { 'src/in.txt': 'shout\n' },
      {
        platform: {
          properties: [
            { name: 'OSFamily', value: 'linux' },
            { name: 'pool', value: 'e2e' },
          ],
        },
      },
    );
    const updates = await execute(actionDigest);
    const last = updates.at(-1)!;
    expect(updates.map((u) => u.stage)).toEqual(expect.arrayContaining([2, 3, 4])); // QUEUED, EXECUTING, COMPLETED
    expect(last.response!.status?.code ?? 0).toBe(Code.OK);
    const result = last.response!.result!;
    expect(result.exitCode).toBe(0);
    expect(await text(result.stdoutDigest)).toBe('done\n');
    expect(result.outputFiles.map((f) => f.path)).toEqual(['out/up.txt']);
    expect(await text(result.outputFiles[0]!.digest)).toBe('SHOUT\n');
    expect(result.outputDirectories.map((d) => d.path)).toEqual(['out/tree']);
    expect(worker.botIds).toContain(result.executionMetadata!.worker);
    expect(result.executionMetadata!.worker).toMatch(new RegExp(`^e2e-${process.pid}-[01]$`));
  });

  it('runs a failing action: its exit code and stderr reach the client', async () => {
    const actionDigest = await upload({ arguments: ['sh', '-c', 'echo "it broke" >&2; exit 7'] });
    const last = (await execute(actionDigest)).at(-1)!;
    expect(last.response!.result!.exitCode).toBe(7);
    expect(await text(last.response!.result!.stderrDigest)).toBe('it broke\n');
  });

  it('runs two actions at once with capacity 2', async () => {
    const stamp = join(dir, `both-${randomUUID()}`);
    // Each waits (up to 10 s) for the other to have started: only parallel slots finish quickly.
    const script = (me: string, other: string) =>
      `touch ${stamp}.${me}; i=0; while [ ! -e ${stamp}.${other} ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; [ -e ${stamp}.${other} ]`;
    const [a, b] = await Promise.all([
      upload({ arguments: ['sh', '-c', script('a', 'b')] }),
      upload({ arguments: ['sh', '-c', script('b', 'a')] }),
    ]);
    const [ra, rb] = await Promise.all([execute(a!), execute(b!)]);
    expect(ra.at(-1)!.response!.result!.exitCode).toBe(0);
    expect(rb.at(-1)!.response!.result!.exitCode).toBe(0);
  });

  it('enforces Action.timeout: DEADLINE_EXCEEDED with the partial result', async () => {
    const actionDigest = await upload(
      { arguments: ['sh', '-c', 'echo before; sleep 30'] },
      {},
      { timeout: { seconds: 1, nanos: 0 } },
    );
    const last = (await execute(actionDigest)).at(-1)!;
    expect(last.response!.status!.code).toBe(Code.DEADLINE_EXCEEDED);
    expect(await text(last.response!.result!.stdoutDigest)).toBe('before\n');
  });

  it('fails with FAILED_PRECONDITION naming a missing input blob', async () => {
    const { Directory } = await import('../../src/gen/build/bazel/remote/execution/v2/remote_execution.js');
    const ghost = { hash: 'ab'.repeat(32), sizeBytes: 5 };
    const root = await put(
      Buffer.from(
        Directory.encode(Directory.fromPartial({ files: [{ name: 'gone', digest: ghost }] })).finish(),
      ),
    );
    const actionDigest = await upload({ arguments: ['true'] }, {}, { inputRootDigest: root });
    const last = (await execute(actionDigest)).at(-1)!;
    const status = last.response!.status!;
    expect(status.code).toBe(Code.FAILED_PRECONDITION);
    expect(status.message).toContain(`${ghost.hash}/5`);
    const failure = PreconditionFailure.decode(status.details[0]!.value);
    expect(failure.violations[0]).toMatchObject({ type: 'MISSING', subject: `blobs/${ghost.hash}/5` });
  });

  it('CancelOperation stops the action: its process is killed', async () => {
    const pidFile = join(dir, `cancel-${randomUUID()}.pid`);
    const actionDigest = await upload({ arguments: ['sh', '-c', `echo $$ > ${pidFile}; sleep 60`] });
    let name = '';
    const done = execute(actionDigest, (u) => (name ||= u.name));
    let pid = 0;
    for (let i = 0; i < 200 && !pid; i++) {
      pid = Number((await readFile(pidFile, 'utf8').catch(() => '')).trim());
      if (!pid) await new Promise((r) => setTimeout(r, 50));
    }
    expect(pid).toBeGreaterThan(0);
    await unaryCall(x.operations, OperationsService.cancelOperation, { name });
    const last = (await done).at(-1)!;
    expect(last.done).toBe(true);
    expect(last.response?.status?.code).toBe(Code.CANCELLED);
    let alive = true;
    for (let i = 0; i < 100 && alive; i++) {
      try {
        const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
        alive = !stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
      } catch {
        alive = false;
      }
      if (alive) await new Promise((r) => setTimeout(r, 50));
    }
    expect(alive).toBe(false);
  });

  it('reconnects when the server restarts', async () => {
    await remex.stop();
    remex = await startRemex({
      config: CONFIG,
      dataDir: join(dir, 'server'),
      args: ['--workers', '0', '--listen', remex.address],
    });
    const actionDigest = await upload({ arguments: ['echo', 'back again'] });
    const last = (await execute(actionDigest)).at(-1)!;
    expect(await text(last.response!.result!.stdoutDigest)).toBe('back again\n');
  });
});
