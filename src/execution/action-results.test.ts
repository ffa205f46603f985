import { describe, expect, it } from 'vitest';
import { ActionCache } from '../actioncache/action-cache.js';
import { Cas } from '../cas/cas.js';
import { MemoryBlobStore } from '../cas/memory-blob-store.js';
import { pack } from '../common/any.js';
import { SHA256, digestOf } from '../common/digest.js';
import { Code } from '../common/status.js';
import { Action, ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { MemoryKeyValueStore } from '../kv/memory-kv-store.js';
import { ACTION_KIND, ActionResults, actionMergeKey, actionResultOf } from './action-results.js';
import { newJob, type Job } from './scheduler/job.js';

const QUEUED_AT = 1_700_000_123_456;

async function setup(failWrites = false) {
  const cas = new Cas(new MemoryBlobStore(1 << 20), { maxBatchTotalSizeBytes: 1 << 20 });
  const kv = new MemoryKeyValueStore(1 << 20);
  if (failWrites) kv.put = () => Promise.reject(new Error('cache is down'));
  const cache = new ActionCache(kv, cas, { allowUpdates: true, maxInlineBytes: 0 });
  const writeErrors: unknown[] = [];
  const results = new ActionResults(cache, {
    writeTimeoutMs: 1_000,
    onWriteError: (_job, err) => void writeErrors.push(err),
  });
  return { results, writeErrors };
}

async function actionJob(doNotCache = false): Promise<Job> {
  const payload = Buffer.from(Action.encode({ ...Action.fromPartial({}), doNotCache }).finish());
  const digest = await digestOf(SHA256, payload);
  return newJob(
    {
      instance: '',
      kind: ACTION_KIND,
      payload,
      fn: SHA256,
      digest,
      mergeKey: doNotCache ? undefined : actionMergeKey(SHA256, digest),
      platform: [],
      priority: 0,
      invocation: 'inv',
      timeoutMs: 0,
    },
    'operations/x',
    QUEUED_AT,
  );
}

const resultOf = (exitCode: number) =>
  pack(
    'build.bazel.remote.execution.v2.ActionResult',
    ActionResult.encode(ActionResult.fromPartial({ exitCode, executionMetadata: { worker: 'w' } })).finish(),
  );
const OK = { code: Code.OK, message: '' };

describe('ActionResults', () => {
  it('writes a successful cacheable result, which the next lookup finds', async () => {
    const { results } = await setup();
    const job = await actionJob();
    expect(await results.lookup('', SHA256, job.digest, {})).toBeUndefined();
    await results.settle(job, { result: resultOf(0), status: OK });
    const hit = actionResultOf(await results.lookup('', SHA256, job.digest, {}));
    expect(hit).toMatchObject({ exitCode: 0, executionMetadata: { worker: 'w' } });
  });

  it('stamps the queued time on every result it settles, failed ones too', async () => {
    const { results } = await setup();
    const job = await actionJob();
    for (const [exitCode, status] of [
      [0, OK],
      [1, OK],
      [0, { code: Code.DEADLINE_EXCEEDED, message: 'timed out' }],
    ] as const) {
      const settled = await results.settle(job, { result: resultOf(exitCode), status });
      expect(settled.status).toEqual(status);
      expect(actionResultOf(settled.result)?.executionMetadata?.queuedTimestamp).toEqual({
        seconds: 1_700_000_123,
        nanos: 456_000_000,
      });
    }
  });

  it('does not cache a non-zero exit, a failed status or a do_not_cache action', async () => {
    const { results } = await setup();
    const failing = await actionJob();
    await results.settle(failing, { result: resultOf(1), status: OK });
    await results.settle(failing, {
      result: resultOf(0),
      status: { code: Code.DEADLINE_EXCEEDED, message: '' },
    });
    expect(await results.lookup('', SHA256, failing.digest, {})).toBeUndefined();
    const uncached = await actionJob(true);
    await results.settle(uncached, { result: resultOf(0), status: OK });
    expect(await results.lookup('', SHA256, uncached.digest, {})).toBeUndefined();
  });

  it('reports a failed cache write and still settles the outcome', async () => {
    const { results, writeErrors } = await setup(true);
    const job = await actionJob();
    const settled = await results.settle(job, { result: resultOf(0), status: OK });
    expect(settled.status).toEqual(OK);
    expect(actionResultOf(settled.result)?.exitCode).toBe(0);
    expect(writeErrors).toEqual([new Error('cache is down')]);
  });

  it('passes an outcome without an ActionResult through unchanged', async () => {
    const { results } = await setup();
    const outcome = { status: { code: Code.INTERNAL, message: 'the worker crashed' } };
    expect(await results.settle(await actionJob(), outcome)).toBe(outcome);
  });
});
