import { afterEach, describe, expect, it, vi } from 'vitest';
import { Cas } from '../cas/cas.js';
import { MemoryBlobStore } from '../cas/memory-blob-store.js';
import { SHA256, digestOf } from '../common/digest.js';
import { log } from '../common/log.js';
import { Code, RemexError } from '../common/status.js';
import { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { MemoryKeyValueStore } from '../kv/memory-kv-store.js';
import { ActionCache } from './action-cache.js';

const ctx = {};
const NO_INLINE = { stdout: false, stderr: false, outputFiles: [] };

/** An action cache over memory stores, with the key of the last entry written. */
async function setup() {
  const cas = new Cas(new MemoryBlobStore(1 << 20), { maxBatchTotalSizeBytes: 1 << 20 });
  const kv = new MemoryKeyValueStore(1 << 20);
  let lastKey = '';
  const put = kv.put.bind(kv);
  kv.put = (key, value, c) => {
    lastKey = key;
    return put(key, value, c);
  };
  const cache = new ActionCache(kv, cas, { allowUpdates: true, maxInlineBytes: 1 << 20 });
  const actionDigest = await digestOf(SHA256, Buffer.from('an action'));
  const stdout = Buffer.from('hello\n');
  await cache.update(
    '',
    SHA256,
    actionDigest,
    ActionResult.fromPartial({ exitCode: 0, stdoutRaw: stdout }),
    ctx,
  );
  const stored = (await kv.get(lastKey, ctx))!;
  return { cache, kv, key: lastKey, actionDigest, stored };
}

async function codeOf(p: Promise<unknown>): Promise<Code | undefined> {
  try {
    await p;
    return undefined;
  } catch (err) {
    return err instanceof RemexError ? err.code : Code.UNKNOWN;
  }
}

describe('ActionCache with a corrupt entry', () => {
  afterEach(() => vi.restoreAllMocks());

  const corruptions: [string, (stored: Buffer) => Buffer][] = [
    ['a truncated', (stored) => stored.subarray(0, stored.length - 3)],
    ['an undecodable', () => Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f])],
    [
      'a malformed-digest',
      () =>
        Buffer.from(
          ActionResult.encode(
            ActionResult.fromPartial({ stdoutDigest: { hash: 'not-a-hash', sizeBytes: 5 } }),
          ).finish(),
        ),
    ],
  ];

  for (const [what, corrupt] of corruptions) {
    it(`treats ${what} entry as a miss, deletes it and logs it`, async () => {
      const { cache, kv, key, actionDigest, stored } = await setup();
      expect((await cache.get('', SHA256, actionDigest, NO_INLINE, ctx)).exitCode).toBe(0);
      await kv.put(key, corrupt(stored), ctx);
      const warn = vi.spyOn(log, 'warn').mockImplementation(() => undefined);
      expect(await codeOf(cache.get('', SHA256, actionDigest, NO_INLINE, ctx))).toBe(Code.NOT_FOUND);
      expect(await kv.get(key, ctx)).toBeUndefined();
      expect(warn).toHaveBeenCalledOnce();
      expect(JSON.stringify(warn.mock.calls[0])).toContain(actionDigest.hash);
      // A fresh result replaces it and is served again.
      await cache.update('', SHA256, actionDigest, ActionResult.fromPartial({ exitCode: 7 }), ctx);
      expect((await cache.get('', SHA256, actionDigest, NO_INLINE, ctx)).exitCode).toBe(7);
    });
  }
});
