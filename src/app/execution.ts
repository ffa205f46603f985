import { randomUUID } from 'node:crypto';
import type { ActionCache } from '../actioncache/action-cache.js';
import type { Cas } from '../cas/cas.js';
import { log } from '../common/log.js';
import type { Config } from '../config/config.js';
import { ACTION_KIND, ActionResults } from '../execution/action-results.js';
import { Execution } from '../execution/execution.js';
import { propertyTypes } from '../execution/platform.js';
import type { Job } from '../execution/scheduler/job.js';
import { MemorySchedulerStore } from '../execution/scheduler/memory-scheduler-store.js';
import { PgSchedulerStore } from '../execution/scheduler/pg-scheduler-store.js';
import type { SchedulerStore } from '../execution/scheduler/scheduler-store.js';
import { Scheduler } from '../execution/scheduler/scheduler.js';

/** Longest a finished action's result may take to reach the action cache. */
const ACTION_CACHE_WRITE_TIMEOUT_MS = 20_000;

/** The scheduler's store named by the config: in memory (one process) or PostgreSQL (shared by replicas). */
async function openSchedulerStore(config: Config): Promise<SchedulerStore> {
  const scheduler = config.execution.scheduler;
  switch (scheduler.type) {
    case 'memory':
      return new MemorySchedulerStore();
    case 'postgres':
      return PgSchedulerStore.open({ url: scheduler.url, poolSize: scheduler.poolSize });
  }
}

/** Remote execution: the scheduler over its store, and Execute on top of it. */
export async function openExecution(config: Config, cas: Cas, actionCache: ActionCache): Promise<Execution> {
  const exec = config.execution;
  const actionResults = new ActionResults(actionCache, {
    writeTimeoutMs: ACTION_CACHE_WRITE_TIMEOUT_MS,
    onWriteError: (job: Job, err: unknown) =>
      log.error({ err, operation: job.name }, 'could not store the action result'),
  });
  const scheduler = new Scheduler({
    store: await openSchedulerStore(config),
    now: Date.now,
    newId: randomUUID,
    botSessionTimeoutMs: exec.botSessionTimeout,
    maxAttempts: exec.maxAttempts,
    unschedulableTimeoutMs: exec.unschedulableTimeout,
    completedRetentionMs: exec.completedRetention,
    propertyTypes: propertyTypes(exec.propertyTypes),
    settle: { [ACTION_KIND]: actionResults.settle },
    onRequeue: (job: Job, why: string) =>
      log.warn({ operation: job.name, attempt: job.attempts, why }, 'action lost its worker; queued again'),
    onError: (job: Job, err: unknown) => log.error({ err, operation: job.name }, 'completing the job failed'),
  });
  return new Execution(scheduler, cas, actionResults, {
    minPriority: exec.minPriority,
    maxPriority: exec.maxPriority,
    keepaliveMs: exec.keepalive,
  });
}
