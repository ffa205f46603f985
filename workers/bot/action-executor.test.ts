import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code } from '../../src/common/status.js';
import {
  Action,
  Command,
  Directory,
  Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { PreconditionFailure } from '../../src/gen/google/rpc/error_details.js';
import type { DeepPartial } from '../../test/helpers/clients.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { ActionExecutor } from './action-executor.js';
import { BlobCache } from '../staging/blob-cache.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { uploadDirectory } from '../../src/remote/directory-upload.js';
import { HostToolsRunner } from '../runners/hosttools-runner.js';
import { ACTION_TYPE_URL, DIGEST_TYPE_URL } from './lease-payload.js';
import { timestampMs } from './timestamps.js';

const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
const digestOf = (b: Buffer) => ({ hash: sha256(b), sizeBytes: b.length });

let remex: RemexProcess;
let cas: CasClient;
let executor: ActionExecutor;
let dir: string;
let execRoot: string;

beforeAll(async () => {
  remex = await startRemex();
  cas = CasClient.connect(remex.address, { instanceName: '' });
  dir = await mkdtemp(join(tmpdir(), 'remex-executor-'));
  execRoot = join(dir, 'exec');
  await mkdir(execRoot);
  executor = new ActionExecutor({
    cas,
    cache: await BlobCache.open(join(dir, 'cache'), cas),
    runner: new HostToolsRunner(),
    execRoot,
    log: pino({ level: 'silent' }),
  });
});

afterAll(async () => {
  cas?.close();
  await rm(dir, { recursive: true, force: true });
  expect(await remex?.stop()).toBe(0);
});

async function put(data: Buffer): Promise<Digest> {
  await cas.upload([{ digest: digestOf(data), data }]);
  return digestOf(data);
}

/** Uploads a Command, an input directory and the Action; returns the Action and its digest. */
async function putAction(
  command: DeepPartial<Command>,
  inputs: Record<string, string> = {},
  action: DeepPartial<Action> = {},
) {
  const src = await mkdtemp(join(dir, 'inputs-'));
  for (const [path, content] of Object.entries(inputs)) {
    await mkdir(join(src, path, '..'), { recursive: true });
    await writeFile(join(src, path), content);
  }
  const full = Action.fromPartial({
    commandDigest: await put(Buffer.from(Command.encode(Command.fromPartial(command)).finish())),
    inputRootDigest: await uploadDirectory(cas, src),
    ...action,
  });
  const bytes = Buffer.from(Action.encode(full).finish());
  return { action: full, bytes, digest: await put(bytes) };
}

const digestPayload = (d: Digest) => ({
  typeUrl: DIGEST_TYPE_URL,
  value: Buffer.from(Digest.encode(d).finish()),
});
const actionPayload = (bytes: Buffer) => ({ typeUrl: ACTION_TYPE_URL, value: bytes });
const run = (payload: { typeUrl: string; value: Buffer }, signal = new AbortController().signal) =>
  executor.execute(payload, 'test-worker', signal);
const text = async (d: Digest | undefined) => (await cas.readBlob(d!, 'blob')).toString();

describe('ActionExecutor', () => {
  it('runs an action named by digest: inputs, env, working directory, outputs, stdout/stderr, metadata', async () => {
    const { digest } = await putAction(
      {
        arguments: [
          'sh',
          '-c',
          'cat ../in/data.txt > out/result.txt; echo "$GREETING"; echo warn >&2; exit 4',
        ],
        environmentVariables: [
          { name: 'GREETING', value: 'hi there' },
          { name: 'PATH', value: '/usr/bin:/bin' },
        ],
        workingDirectory: 'work',
        outputPaths: ['out/result.txt', 'out/not-made'],
      },
      { 'in/data.txt': 'input data\n', 'work/.keep': '' },
    );
    const { status, result } = await run(digestPayload(digest));
    expect(status).toEqual({ code: Code.OK, message: '', details: [] });
    expect(result!.exitCode).toBe(4);
    expect(await text(result!.stdoutDigest)).toBe('hi there\n');
    expect(await text(result!.stderrDigest)).toBe('warn\n');
    expect(result!.outputFiles).toEqual([
      expect.objectContaining({ path: 'out/result.txt', digest: digestOf(Buffer.from('input data\n')) }),
    ]);
    expect(await text(result!.outputFiles[0]!.digest)).toBe('input data\n');
    const m = result!.executionMetadata!;
    expect(m.worker).toBe('test-worker');
    expect(m.queuedTimestamp).toBeUndefined();
    const order = [
      m.workerStartTimestamp,
      m.inputFetchStartTimestamp,
      m.inputFetchCompletedTimestamp,
      m.executionStartTimestamp,
      m.executionCompletedTimestamp,
      m.outputUploadStartTimestamp,
      m.outputUploadCompletedTimestamp,
      m.workerCompletedTimestamp,
    ].map((t) => timestampMs(t!));
    expect([...order].sort((a, b) => a - b)).toEqual(order);
    expect(await readdir(execRoot)).toEqual([]); // the action directory is gone
  });

  it('runs an action carried whole in the payload', async () => {
    const { bytes } = await putAction({ arguments: ['/bin/echo', 'inline'], outputPaths: [] });
    const { status, result } = await run(actionPayload(bytes));
    expect(status.code).toBe(Code.OK);
    expect(await text(result!.stdoutDigest)).toBe('inline\n');
  });

  it('on timeout answers DEADLINE_EXCEEDED with the partial result', async () => {
    const { digest } = await putAction(
      {
        arguments: ['sh', '-c', 'echo started > partial.txt; echo started; exec sleep 60'],
        outputPaths: ['partial.txt'],
      },
      {},
      { timeout: { seconds: 0, nanos: 300_000_000 } },
    );
    const started = Date.now();
    const { status, result } = await run(digestPayload(digest));
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(status).toMatchObject({
      code: Code.DEADLINE_EXCEEDED,
      message: 'the action timed out after 0.3 s',
    });
    expect(await text(result!.stdoutDigest)).toBe('started\n');
    expect(result!.outputFiles.map((f) => f.path)).toEqual(['partial.txt']);
  });

  it('answers CANCELLED when the lease is aborted, and kills the command', async () => {
    const { digest } = await putAction({
      arguments: ['sleep', '60'],
      environmentVariables: [{ name: 'PATH', value: '/bin:/usr/bin' }],
    });
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 300);
    const started = Date.now();
    const outcome = await run(digestPayload(digest), abort.signal);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(outcome).toEqual({
      status: { code: Code.CANCELLED, message: 'the lease was cancelled', details: [] },
    });
  });

  it('answers FAILED_PRECONDITION with PreconditionFailure details for a missing input blob', async () => {
    const absent = digestOf(Buffer.from(`absent ${Math.random()}`));
    const root = Buffer.from(
      Directory.encode(Directory.fromPartial({ files: [{ name: 'gone.txt', digest: absent }] })).finish(),
    );
    const { digest } = await putAction({ arguments: ['true'] }, {}, { inputRootDigest: await put(root) });
    const { status, result } = await run(digestPayload(digest));
    expect(result).toBeUndefined();
    expect(status.code).toBe(Code.FAILED_PRECONDITION);
    expect(status.message).toBe(
      `input tree: 1 blob missing from the CAS: ${absent.hash}/${absent.sizeBytes}`,
    );
    expect(status.details[0]!.typeUrl).toBe('type.googleapis.com/google.rpc.PreconditionFailure');
    expect(PreconditionFailure.decode(status.details[0]!.value).violations).toEqual([
      { type: 'MISSING', subject: `blobs/${absent.hash}/${absent.sizeBytes}`, description: '' },
    ]);
  });

  it('answers FAILED_PRECONDITION when the Action or Command is not in the CAS', async () => {
    const ghost = digestOf(Buffer.from(`no such action ${Math.random()}`));
    const { status } = await run(digestPayload(ghost));
    expect(status).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: `action: 1 blob missing from the CAS: ${ghost.hash}/${ghost.sizeBytes}`,
    });
    const { digest } = await putAction({ arguments: ['true'] }, {}, { commandDigest: ghost });
    expect((await run(digestPayload(digest))).status).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: `command: 1 blob missing from the CAS: ${ghost.hash}/${ghost.sizeBytes}`,
    });
  });

  it('answers INVALID_ARGUMENT for hostile inputs, bad outputs, empty commands and unknown payloads', async () => {
    const file = await put(Buffer.from('x'));
    const evil = Buffer.from(
      Directory.encode(Directory.fromPartial({ files: [{ name: '..', digest: file }] })).finish(),
    );
    const hostile = await putAction({ arguments: ['true'] }, {}, { inputRootDigest: await put(evil) });
    expect((await run(digestPayload(hostile.digest))).status).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining('has an entry with the name ".."'),
    });
    const escaping = await putAction({ arguments: ['true'], outputPaths: ['../../etc/passwd'] });
    expect((await run(digestPayload(escaping.digest))).status).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: 'output_paths entry "../../etc/passwd" contains a ".." segment',
    });
    const empty = await putAction({ arguments: [] });
    expect((await run(digestPayload(empty.digest))).status.code).toBe(Code.INVALID_ARGUMENT);
    expect(
      (await run({ typeUrl: 'type.googleapis.com/google.protobuf.Empty', value: Buffer.alloc(0) })).status,
    ).toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining(
        'the lease payload has type "type.googleapis.com/google.protobuf.Empty"',
      ),
    });
  });
});
