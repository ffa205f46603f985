import type { ChildProcess } from 'node:child_process';
import { setLongTimeout } from '../../src/common/timers.js';

export interface GroupOutcome {
  /** How the leader ended, or the error that kept it from starting. */
  exit: { code: number | null; signal: NodeJS.Signals | null } | Error;
  timedOut: boolean;
  cancelled: boolean;
}

/**
 * Waits for a child started with `detached: true` (so it leads its own process group)
 * and kills the whole group with SIGKILL on timeout, on abort, and once the leader has
 * exited (whatever it left running in its group goes too).
 */
export async function superviseGroup(
  child: ChildProcess,
  limits: { timeoutMs?: number; signal: AbortSignal },
): Promise<GroupOutcome> {
  let timedOut = false;
  let cancelled = false;
  const killGroup = () => {
    if (child.pid === undefined) return;
    try {
      process.kill(-child.pid, 'SIGKILL');
    } catch {
      // ESRCH: the group is already gone.
    }
  };
  const onAbort = () => {
    cancelled = true;
    killGroup();
  };
  limits.signal.addEventListener('abort', onAbort, { once: true });
  const timer =
    limits.timeoutMs === undefined
      ? undefined
      : setLongTimeout(() => {
          timedOut = true;
          killGroup();
        }, limits.timeoutMs);
  const exit = await new Promise<GroupOutcome['exit']>((resolve) => {
    child.once('error', resolve);
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  timer?.clear();
  limits.signal.removeEventListener('abort', onAbort);
  killGroup();
  return { exit, timedOut, cancelled };
}
