import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { MAX_TIMER_MS, setLongTimeout } from './timers.js';

describe('setLongTimeout', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  it('fires after a delay within the 32-bit range', () => {
    const fn = vi.fn();
    setLongTimeout(fn, 1000);
    vi.advanceTimersByTime(999);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(fn).toHaveBeenCalledOnce();
  });

  it('waits the whole of a delay beyond 2^31-1 ms (30 days) instead of firing at once', () => {
    const fn = vi.fn();
    const days30 = 30 * 24 * 3600 * 1000;
    setLongTimeout(fn, days30);
    vi.advanceTimersByTime(1);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(MAX_TIMER_MS);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(days30 - MAX_TIMER_MS - 2);
    expect(fn).not.toHaveBeenCalled();
    vi.advanceTimersByTime(1);
    expect(fn).toHaveBeenCalledOnce();
  });

  it('never fires for an infinite or NaN delay, and fires at once for a negative one', () => {
    const never = vi.fn();
    setLongTimeout(never, Infinity);
    setLongTimeout(never, NaN);
    const soon = vi.fn();
    setLongTimeout(soon, -5);
    vi.advanceTimersByTime(1);
    expect(soon).toHaveBeenCalledOnce();
    vi.advanceTimersByTime(10 * MAX_TIMER_MS);
    expect(never).not.toHaveBeenCalled();
  });

  it('clear stops it, also between steps of a long delay', () => {
    const fn = vi.fn();
    const t = setLongTimeout(fn, 3 * MAX_TIMER_MS);
    vi.advanceTimersByTime(MAX_TIMER_MS + 5);
    t.clear();
    t.clear();
    vi.advanceTimersByTime(5 * MAX_TIMER_MS);
    expect(fn).not.toHaveBeenCalled();
  });
});
