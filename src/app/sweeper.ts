import { log } from '../common/log.js';
import type { Scheduler } from '../execution/scheduler/scheduler.js';

/** How often the scheduler is swept. */
const SWEEP_INTERVAL_MS = 1_000;

/**
 * Runs the scheduler's sweep every second, one at a time. The sweep reaches the
 * scheduler's store (a database, for PostgreSQL), so it doubles as the health probe of
 * the execution services: onHealth(false) while it fails, onHealth(true) once it works.
 * Returns the function that stops it.
 */
export function startSweeper(scheduler: Scheduler, onHealth: (healthy: boolean) => void): () => void {
  let sweeping = false;
  let healthy = true;
  const timer = setInterval(() => {
    if (sweeping) return;
    sweeping = true;
    // Through then(): a sweep that throws at once must not throw out of the timer.
    Promise.resolve()
      .then(() => scheduler.sweep())
      .then(
        () => {
          if (!healthy) log.info('scheduler reachable again; execution services SERVING');
          healthy = true;
        },
        (err: unknown) => {
          if (healthy) log.warn({ err }, 'scheduler sweep failed; execution services NOT_SERVING');
          healthy = false;
        },
      )
      .finally(() => {
        sweeping = false;
        onHealth(healthy);
      });
  }, SWEEP_INTERVAL_MS);
  timer.unref();
  return () => clearInterval(timer);
}
