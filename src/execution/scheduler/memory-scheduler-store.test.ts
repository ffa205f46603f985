import { afterEach } from 'vitest';
import { MemorySchedulerStore } from './memory-scheduler-store.js';
import { START_TIME, recordingOptions, schedulerContract } from './scheduler.contract.js';
import { Scheduler } from './scheduler.js';

const opened: Scheduler[] = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => s.close()));
});

// One process: clients and bots reach the same scheduler.
schedulerContract('the memory store', async (over = {}) => {
  let clock = START_TIME;
  let ids = 0;
  const settled: string[] = [];
  const requeued: string[] = [];
  const store = new MemorySchedulerStore();
  const scheduler = new Scheduler({
    ...recordingOptions(() => clock, settled, requeued),
    store,
    newId: () => `id${++ids}`,
    ...over,
  });
  opened.push(scheduler);
  return { client: scheduler, worker: scheduler, store, settled, requeued, advance: (ms) => (clock += ms) };
});
