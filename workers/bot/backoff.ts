import { sleep } from '../../src/remote/concurrency.js';

/**
 * Exponential reconnect backoff: 0.2 s doubling up to 5 s by default, reset after a
 * successful call. Used by the bot loop to ride out server restarts indefinitely.
 */
export class Backoff {
  private next: number;

  constructor(
    private readonly initialMs = 200,
    private readonly maxMs = 5000,
  ) {
    this.next = initialMs;
  }

  reset(): void {
    this.next = this.initialMs;
  }

  /** The delay the next wait() will use. */
  peek(): number {
    return this.next;
  }

  /** Waits the current delay (returns early when the signal aborts) and doubles it. */
  async wait(signal?: AbortSignal): Promise<void> {
    const ms = this.next;
    this.next = Math.min(this.next * 2, this.maxMs);
    await sleep(ms, signal);
  }
}
