import { access, constants, lstat, readdir, readlink, stat } from 'node:fs/promises';
import { join, posix } from 'node:path';
import { invalidArgument } from '../../src/common/status.js';
import { DEFAULT_PATH } from './program-path.js';
import { isWithin } from '../../src/remote/paths.js';

/** Top-level directories the sandbox mounts afresh (--dev, --proc, --tmpfs), hiding the root's own. */
const FRESH_MOUNTS = ['dev', 'proc', 'tmp'];
const MAX_SYMLINK_HOPS = 40;

/** A program found (its sandbox path), or why not with the exit code a shell would give (127, 126). */
export type ChrootProgramLookup =
  { found: true; path: string } | { found: false; reason: string; exitCode: 126 | 127 };

/**
 * The file system an action sees under the userchroot runner: the materialised root
 * `root` read-only at /, the action's input root `inputRoot` read-write at its own host
 * path (so the working directory and every path given to the action stay valid), and
 * fresh /dev, /proc and /tmp. Turns that into bubblewrap arguments, and looks programs up
 * in it as the action would, symlinks followed inside the root.
 */
export class ChrootView {
  private readonly inputSegments: string[];

  constructor(
    readonly root: string,
    readonly inputRoot: string,
  ) {
    if (!posix.isAbsolute(inputRoot)) throw invalidArgument(`input root ${inputRoot} is not absolute`);
    this.inputSegments = segmentsOf(inputRoot);
  }

  /**
   * bubblewrap mount arguments. The root cannot be bound at / read-only with the input
   * root's mount point created inside it, so / is bubblewrap's own tmpfs, each top-level
   * entry of the root is bound read-only (symlinks recreated), the directories on the way
   * to the input root are recreated with their entries bound one by one, and / is made
   * read-only last: the input root and /tmp are the only writable places.
   */
  async mountArgs(): Promise<string[]> {
    const args: string[] = [];
    const onPath = FRESH_MOUNTS.includes(this.inputSegments[0] ?? '') ? [] : this.inputSegments;
    await this.spread(this.root, '/', onPath, args);
    args.push('--dev', '/dev', '--proc', '/proc', '--tmpfs', '/tmp');
    args.push('--bind', this.inputRoot, this.inputRoot);
    args.push('--remount-ro', '/');
    return args;
  }

  /** Binds the entries of host directory `host` at sandbox directory `at`, leaving room for `onPath`. */
  private async spread(host: string, at: string, onPath: string[], args: string[]): Promise<void> {
    for (const entry of (await readdir(host, { withFileTypes: true })).sort(byName)) {
      const from = join(host, entry.name);
      const to = posix.join(at, entry.name);
      if (at === '/' && FRESH_MOUNTS.includes(entry.name)) continue;
      if (entry.name === onPath[0]) {
        // On the way to the input root: recreate the directory and bind its other entries;
        // the input root itself (or anything else standing in its way) is left out.
        if (onPath.length > 1 && entry.isDirectory()) {
          const mode = (await stat(from)).mode & 0o7777;
          args.push('--perms', mode.toString(8).padStart(4, '0'), '--dir', to);
          await this.spread(from, to, onPath.slice(1), args);
        }
      } else if (entry.isSymbolicLink()) {
        args.push('--symlink', await readlink(from), to);
      } else if (entry.isDirectory() || entry.isFile()) {
        args.push('--ro-bind', from, to);
      }
    }
  }

  /** The host path behind an absolute sandbox path, with no symlink resolution; undefined where nothing is. */
  hostPath(path: string): string | undefined {
    if (path === this.inputRoot || isWithin(this.inputRoot, path)) return path;
    if (FRESH_MOUNTS.includes(segmentsOf(path)[0] ?? '')) return undefined;
    return join(this.root, path);
  }

  /** The host path of the file an absolute sandbox path leads to, symlinks followed as inside; undefined if none. */
  async resolve(path: string): Promise<string | undefined> {
    let pending = segmentsOf(path);
    const done: string[] = [];
    let hops = 0;
    while (pending.length > 0) {
      const segment = pending.shift()!;
      if (segment === '..') {
        done.pop();
        continue;
      }
      const at = `/${[...done, segment].join('/')}`;
      if (isWithin(at, this.inputRoot)) {
        // The input root and the directories leading to it are plain directories inside.
        done.push(segment);
        continue;
      }
      const host = this.hostPath(at);
      const info = host === undefined ? undefined : await lstat(host).catch(() => undefined);
      if (!host || !info) return undefined;
      if (info.isSymbolicLink()) {
        if (++hops > MAX_SYMLINK_HOPS) return undefined;
        const target = await readlink(host);
        if (target.startsWith('/')) done.length = 0;
        pending = [...segmentsOf(target), ...pending];
      } else {
        done.push(segment);
      }
    }
    return this.hostPath(`/${done.join('/')}`);
  }

  /**
   * Resolves argv[0] as the hosttools runner does (REAPI v2.3: a name with '/' is relative
   * to the working directory, a bare name is looked up in the Command's PATH, else
   * DEFAULT_PATH), but in this file system. The path returned is the sandbox path, its
   * symlinks unresolved.
   */
  async findProgram(program: string, envPath: string | undefined, cwd: string): Promise<ChrootProgramLookup> {
    if (program.includes('/')) {
      const path = posix.resolve(cwd, program);
      const host = await this.resolve(path);
      if (!host)
        return {
          found: false,
          reason: `${JSON.stringify(path)}: ENOENT: no such file or directory`,
          exitCode: 127,
        };
      if (!(await isExecutableFile(host))) {
        return { found: false, reason: `${JSON.stringify(path)}: EACCES: permission denied`, exitCode: 126 };
      }
      return { found: true, path };
    }
    const searched = envPath ?? DEFAULT_PATH;
    for (const dir of searched.split(':')) {
      const candidate = posix.resolve(cwd, dir === '' ? '.' : dir, program);
      const host = await this.resolve(candidate);
      if (host && (await isExecutableFile(host))) return { found: true, path: candidate };
    }
    return {
      found: false,
      exitCode: 127,
      reason: `${JSON.stringify(program)} was not found in PATH ${JSON.stringify(searched)} in the chroot${envPath === undefined ? ' (the Command sets no PATH; this is the worker default)' : ''}`,
    };
  }
}

function segmentsOf(path: string): string[] {
  return path.split('/').filter((s) => s !== '' && s !== '.');
}

const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

async function isExecutableFile(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}
