import type { Job } from './job.js';

/**
 * Where the scheduler keeps jobs (operations). The in-memory store serves the embedded
 * default; a PostgreSQL store will let several replicas share one queue.
 */
export interface SchedulerStore {
  put(job: Job): void;
  get(name: string): Job | undefined;
  delete(name: string): void;
  all(): Iterable<Job>;
}

export class MemorySchedulerStore implements SchedulerStore {
  private readonly jobs = new Map<string, Job>();
  put(job: Job): void {
    this.jobs.set(job.name, job);
  }
  get(name: string): Job | undefined {
    return this.jobs.get(name);
  }
  delete(name: string): void {
    this.jobs.delete(name);
  }
  all(): Iterable<Job> {
    return this.jobs.values();
  }
}
