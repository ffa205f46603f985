import { describe, expect, it } from 'vitest';
import { KeyedChain } from './keyed-chain.js';

/** A promise the test settles by hand. */
function gate<T = void>() {
  let open!: (value: T) => void;
  let fail!: (err: unknown) => void;
  const promise = new Promise<T>((resolve, reject) => {
    open = resolve;
    fail = reject;
  });
  return { promise, open, fail };
}

describe('KeyedChain', () => {
  it('runs tasks of one key one after another, in call order', async () => {
    const chain = new KeyedChain<string>();
    const log: string[] = [];
    const first = gate();
    const a = chain.run('k', async () => {
      log.push('a start');
      await first.promise;
      log.push('a end');
      return 'a';
    });
    const b = chain.run('k', async () => {
      log.push('b');
      return 'b';
    });
    await new Promise(setImmediate);
    expect(log).toEqual(['a start']);
    first.open();
    expect(await Promise.all([a, b])).toEqual(['a', 'b']);
    expect(log).toEqual(['a start', 'a end', 'b']);
  });

  it('keeps the order when a task arrives after an earlier one settled but not the latest', async () => {
    const chain = new KeyedChain<string>();
    const second = gate();
    const a = chain.run('k', async () => undefined);
    const b = chain.run('k', () => second.promise);
    await a;
    await new Promise(setImmediate);
    // The first has settled, the second still runs: the third waits for the second.
    let ranC = false;
    const c = chain.run('k', async () => {
      ranC = true;
    });
    await new Promise(setImmediate);
    expect(ranC).toBe(false);
    second.open();
    await Promise.all([b, c]);
    expect(ranC).toBe(true);
  });

  it('runs tasks of different keys concurrently', async () => {
    const chain = new KeyedChain<string>();
    const held = gate();
    const a = chain.run('a', () => held.promise);
    let ranB = false;
    await chain.run('b', async () => {
      ranB = true;
    });
    expect(ranB).toBe(true);
    held.open();
    await a;
  });

  it('starts an uncontended task at once, in the same tick', () => {
    const chain = new KeyedChain<string>();
    let ran = false;
    void chain.run('k', async () => {
      ran = true;
    });
    expect(ran).toBe(true);
  });

  it('a failing task rejects its caller only and does not stop the next one', async () => {
    const chain = new KeyedChain<string>();
    const a = chain.run('k', async () => {
      throw new Error('boom');
    });
    const b = chain.run('k', async () => 'b');
    await expect(a).rejects.toThrow('boom');
    expect(await b).toBe('b');
  });

  it('forgets a key once its last task settles, whether it succeeded or failed', async () => {
    const chain = new KeyedChain<string>();
    const held = gate();
    const a = chain.run('a', () => held.promise);
    const b = chain.run('b', async () => {
      throw new Error('boom');
    });
    const a2 = chain.run('a', async () => undefined);
    expect(chain.size).toBe(2);
    await expect(b).rejects.toThrow('boom');
    await new Promise(setImmediate);
    expect(chain.size).toBe(1);
    held.open();
    await Promise.all([a, a2]);
    await new Promise(setImmediate);
    expect(chain.size).toBe(0);
  });

  it('does not grow with the number of keys it has seen', async () => {
    const chain = new KeyedChain<number>();
    await Promise.all(Array.from({ length: 1000 }, (_, i) => chain.run(i, async () => i)));
    await new Promise(setImmediate);
    expect(chain.size).toBe(0);
  });
});
