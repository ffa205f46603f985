import { Redis as RedisClient } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRedis, type Redis } from '../../test/helpers/services.js';
import { Code, RemexError } from '../common/status.js';
import { RedisKeyValueStore } from './redis-kv-store.js';

const ctx = {};
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Retries fn every 50 ms until it returns true, for at most timeoutMs. */
async function eventually(fn: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > until) throw new Error(`condition not met within ${timeoutMs} ms`);
    await sleep(50);
  }
}

describe('RedisKeyValueStore', () => {
  let redis: Redis;
  let prefixNo = 0;
  const stores: RedisKeyValueStore[] = [];
  const open = (options: { ttlMs?: number; commandTimeoutMs?: number } = {}) => {
    const store = new RedisKeyValueStore({
      url: redis.url,
      keyPrefix: `test${prefixNo++}:`,
      name: 'ac',
      ...options,
    });
    stores.push(store);
    return store;
  };

  beforeAll(async () => {
    redis = await startRedis();
  });
  afterAll(async () => {
    await Promise.all(stores.map((s) => s.close()));
    await redis?.stop();
  });

  it('stores, overwrites and misses (binary values, empty key and value)', async () => {
    const kv = open();
    expect(await kv.get('a', ctx)).toBeUndefined();
    await kv.put('a', Buffer.from('one'), ctx);
    await kv.put('a', Buffer.from('two'), ctx);
    expect((await kv.get('a', ctx))?.toString()).toBe('two');
    const binary = Buffer.from([0, 255, 1, 254, 0x0d, 0x0a]);
    await kv.put('bin', binary, ctx);
    expect(await kv.get('bin', ctx)).toEqual(binary);
    await kv.put('', Buffer.alloc(0), ctx);
    expect(await kv.get('', ctx)).toEqual(Buffer.alloc(0));
  });

  it('deletes an entry of its own prefix only, and a missing one without complaint', async () => {
    const one = open();
    const two = open();
    await one.put('k', Buffer.from('one'), ctx);
    await two.put('k', Buffer.from('two'), ctx);
    await one.delete('k', ctx);
    await one.delete('never-written', ctx);
    expect(await one.get('k', ctx)).toBeUndefined();
    expect((await two.get('k', ctx))?.toString()).toBe('two');
  });

  it('keeps stores with different key prefixes apart', async () => {
    const one = open();
    const two = open();
    await one.put('k', Buffer.from('one'), ctx);
    expect(await two.get('k', ctx)).toBeUndefined();
  });

  it('lets Redis expire entries after ttlMs', async () => {
    const kv = open({ ttlMs: 200 });
    await kv.put('short-lived', Buffer.from('v'), ctx);
    await eventually(async () => (await kv.get('short-lived', ctx)) === undefined);
  });

  it('answers UNAVAILABLE while Redis is down and works again once it is back', async () => {
    const kv = open();
    await kv.put('survivor', Buffer.from('before'), ctx);
    await redis.kill();

    const started = Date.now();
    const err = await kv.get('survivor', ctx).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect((err as RemexError).code).toBe(Code.UNAVAILABLE);
    expect((err as RemexError).message).toMatch(
      new RegExp(`^ac: redis at 127\\.0\\.0\\.1:${redis.port} is unavailable: `),
    );
    // Prompt: far below the command timeout (5 s), no queueing behind reconnection.
    expect(Date.now() - started).toBeLessThan(3000);
    const putErr = await kv.put('x', Buffer.from('y'), ctx).catch((e: unknown) => e);
    expect((putErr as RemexError).code).toBe(Code.UNAVAILABLE);

    await redis.restart(); // an empty server: kill() kept nothing
    await eventually(async () => {
      try {
        await kv.put('after', Buffer.from('restart'), ctx);
        return true;
      } catch (e) {
        expect((e as RemexError).code).toBe(Code.UNAVAILABLE);
        return false;
      }
    });
    expect((await kv.get('after', ctx))?.toString()).toBe('restart');
    expect(await kv.get('survivor', ctx)).toBeUndefined();
  });

  it('fails UNAVAILABLE when the server does not answer within commandTimeoutMs', async () => {
    const kv = open({ commandTimeoutMs: 200 });
    await kv.put('k', Buffer.from('v'), ctx);
    const admin = new RedisClient(redis.url);
    try {
      await admin.call('CLIENT', 'PAUSE', '1500', 'ALL');
      await expect(kv.get('k', ctx)).rejects.toMatchObject({
        code: Code.UNAVAILABLE,
        message: `ac: redis at 127.0.0.1:${redis.port} is unavailable: no reply within 200 ms`,
      });
      await admin.call('CLIENT', 'UNPAUSE');
      expect((await kv.get('k', ctx))?.toString()).toBe('v');
    } finally {
      admin.disconnect();
    }
  });

  it('fails UNAVAILABLE, not hangs, when nothing listens at the address', async () => {
    const kv = new RedisKeyValueStore({ url: 'redis://127.0.0.1:1', name: 'nowhere', connectTimeoutMs: 500 });
    stores.push(kv);
    await expect(kv.get('k', ctx)).rejects.toMatchObject({ code: Code.UNAVAILABLE });
  });

  it('fails every call after close()', async () => {
    const kv = open();
    await kv.put('k', Buffer.from('v'), ctx);
    await kv.close();
    await expect(kv.get('k', ctx)).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: expect.stringContaining('the store is closed'),
    });
  });
});
