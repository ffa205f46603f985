import * as fs from 'node:fs/promises';
import type { DiskFs } from '../../src/common/disk-fs.js';

type Op = 'rename' | 'rm';

interface Pause {
  op: Op;
  path: string;
  reached: () => void;
  released: Promise<void>;
}

/**
 * A DiskFs over the real filesystem for tests that need an exact interleaving: it can
 * hold a call once it has happened (the caller does not see it complete until released),
 * and it records which paths were fsynced.
 */
export class HookedFs implements DiskFs {
  /** Paths whose handle was fsynced, in order. */
  readonly synced: string[] = [];
  /** Called after each fsync, with its path. */
  onSync?: (path: string) => void;
  private readonly pauses: Pause[] = [];

  /**
   * Holds the next `op` on `path` (for rename: the destination) after it has happened.
   * `reached` resolves then; the caller continues after `release()`.
   */
  pauseAfter(op: Op, path: string): { reached: Promise<void>; release: () => void } {
    let release!: () => void;
    let reached!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const reachedPromise = new Promise<void>((resolve) => (reached = resolve));
    this.pauses.push({ op, path, reached, released });
    return { reached: reachedPromise, release };
  }

  async open(path: string, flags: string): Promise<fs.FileHandle> {
    const handle = await fs.open(path, flags);
    const sync = handle.sync.bind(handle);
    handle.sync = async () => {
      await sync();
      this.synced.push(path);
      this.onSync?.(path);
    };
    return handle;
  }

  async rename(from: string, to: string): Promise<void> {
    await fs.rename(from, to);
    await this.hold('rename', to);
  }

  async rm(path: string, options?: { force?: boolean; recursive?: boolean }): Promise<void> {
    await fs.rm(path, options);
    await this.hold('rm', path);
  }

  private async hold(op: Op, path: string): Promise<void> {
    const i = this.pauses.findIndex((p) => p.op === op && p.path === path);
    if (i < 0) return;
    const [pause] = this.pauses.splice(i, 1);
    pause!.reached();
    await pause!.released;
  }
}
