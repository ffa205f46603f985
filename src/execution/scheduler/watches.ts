import type { Job } from './job.js';

interface Watch {
  listeners: Set<(job: Job) => void>;
  reading: boolean;
  again: boolean;
}

/**
 * The watchers of jobs in this process (Execute and WaitExecution streams, WaitOperation).
 * A change is announced by name; the job is re-read from the store, one read at a time
 * per job, so listeners never see an older state after a newer one (changes in quick
 * succession may arrive as one).
 */
export class Watches {
  private readonly watches = new Map<string, Watch>();

  constructor(private readonly read: (name: string) => Promise<Job | undefined>) {}

  add(name: string, listener: (job: Job) => void): () => void {
    let watch = this.watches.get(name);
    if (!watch) this.watches.set(name, (watch = { listeners: new Set(), reading: false, again: false }));
    watch.listeners.add(listener);
    return () => {
      watch.listeners.delete(listener);
      if (watch.listeners.size === 0 && this.watches.get(name) === watch) this.watches.delete(name);
    };
  }

  /** The job changed: re-read it and tell its listeners. */
  async changed(name: string): Promise<void> {
    const watch = this.watches.get(name);
    if (!watch) return;
    if (watch.reading) {
      watch.again = true;
      return;
    }
    watch.reading = true;
    try {
      do {
        watch.again = false;
        // A failed read (store unreachable) is not an answer; the stream's keepalive re-reads.
        const job = await this.read(name).catch(() => undefined);
        if (job) for (const listener of [...watch.listeners]) listener(job);
      } while (watch.again);
    } finally {
      watch.reading = false;
    }
  }

  /** Every watched job may have changed. */
  all(): void {
    for (const name of this.watches.keys()) void this.changed(name);
  }
}
