/**
 * Serialises async tasks per key: a task starts once every earlier task of its key has
 * settled; tasks of different keys run concurrently. A key is held only while it has a
 * task pending, so the map stays as small as the number of keys in use.
 */
export class KeyedChain<K> {
  /** Per key, the last task's completion (never rejects). */
  private readonly tails = new Map<K, Promise<void>>();

  /** Keys with a task pending or running. */
  get size(): number {
    return this.tails.size;
  }

  /**
   * Runs `task` after the earlier tasks of `key`, and resolves or rejects as it does. A
   * failing task does not stop the ones after it. Uncontended, the task starts at once
   * (an async function, so that it reports a failure by rejecting, not by throwing).
   */
  run<T>(key: K, task: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key);
    const result = prev ? prev.then(task) : task();
    const done = () => this.settled(key, tail);
    const tail: Promise<void> = result.then(done, done);
    this.tails.set(key, tail);
    return result;
  }

  private settled(key: K, tail: Promise<void>): void {
    // A later task has chained on this one: the key is still in use.
    if (this.tails.get(key) === tail) this.tails.delete(key);
  }
}
