/**
 * Node keeps a timer's delay in a signed 32-bit count of milliseconds: a longer delay
 * (an `Action.timeout` of 30 days, a long `WaitOperation`) fires after 1 ms instead, with
 * only a process warning. Every delay that comes from a client or a config goes through
 * setLongTimeout, which waits in steps of at most this long.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

export interface LongTimer {
  /** Stops the timer; fn is not called afterwards. Safe to call more than once. */
  clear(): void;
}

/**
 * Calls fn once after ms milliseconds, however long that is. An infinite or NaN delay
 * never fires; a negative one fires on the next turn. With unref, the timer does not keep
 * the process alive.
 */
export function setLongTimeout(fn: () => void, ms: number, options: { unref?: boolean } = {}): LongTimer {
  let timer: NodeJS.Timeout | undefined;
  const arm = (remaining: number) => {
    timer =
      remaining > MAX_TIMER_MS
        ? setTimeout(() => arm(remaining - MAX_TIMER_MS), MAX_TIMER_MS)
        : setTimeout(fn, Math.max(remaining, 0));
    if (options.unref) timer.unref();
  };
  if (ms < Infinity) arm(ms);
  return { clear: () => clearTimeout(timer) };
}
