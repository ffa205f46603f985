import { execFile } from 'node:child_process';
import { open } from 'node:fs/promises';
import { validateDigest, type Digest } from '../../src/common/digest.js';
import { invalidArgument } from '../../src/common/status.js';
import type { ChrootStore } from './chroot-store.js';
import { ChrootView } from './chroot-view.js';
import { HostToolsRunner } from './hosttools-runner.js';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** The platform property naming the root filesystem: a Directory digest, "hash/size". */
export const CHROOT_ROOT_PROPERTY = 'chrootRootDigest';

const DEFAULT_BWRAP = '/usr/bin/bwrap';

export interface UserchrootRunnerOptions {
  /** Where root filesystems are materialised (one per digest, reused). */
  chroots: ChrootStore;
  /** The bubblewrap binary (default /usr/bin/bwrap, Debian's bubblewrap). */
  bwrap?: string;
}

/**
 * Runs each command inside a root filesystem taken from the CAS, as BuildGrid's
 * userchroot runner does, but with Linux namespaces through bubblewrap instead of a
 * setuid helper. The platform property `chrootRootDigest` ("hash/size" of a Directory,
 * as `remex chroot upload` prints) names the root; the ChrootStore materialises it once
 * per worker and every action using it shares it, mounted read-only at /. The action's
 * input root is mounted read-write at its own host path, so the working directory and
 * output paths are the same inside and out; /tmp is a private tmpfs, /dev and /proc are
 * fresh. Every namespace is new (no network: only a loopback device of its own; a PID
 * namespace, so nothing outlives the action), and the sandbox dies with the worker.
 *
 * The process is started through the hosttools runner, so timeout and cancellation kill
 * the bubblewrap process group, which takes the whole PID namespace down with it. argv[0]
 * is looked up in the chroot (the Command's PATH, else the worker default) first, so a
 * missing or non-executable program gives 127 / 126 with the reason on stderr, as on the
 * host. The environment is exactly the Command's, except that bubblewrap always exports
 * PWD (the working directory) after changing to it. A missing or malformed `chrootRootDigest` is INVALID_ARGUMENT; a root missing
 * from the CAS is FAILED_PRECONDITION naming it.
 */
export class UserchrootRunner implements Runner {
  private readonly host = new HostToolsRunner();
  private readonly bwrap: string;

  constructor(private readonly options: UserchrootRunnerOptions) {
    this.bwrap = options.bwrap ?? DEFAULT_BWRAP;
  }

  /** Whether bubblewrap can make the sandbox on this host (it needs namespaces: root or user namespaces). */
  static async available(bwrap = DEFAULT_BWRAP): Promise<boolean> {
    const args = [
      '--unshare-all',
      '--die-with-parent',
      '--ro-bind',
      '/',
      '/',
      '--dev',
      '/dev',
      '--proc',
      '/proc',
      '--tmpfs',
      '/tmp',
      '--remount-ro',
      '/',
      '--',
      'true',
    ];
    return new Promise((resolve) => {
      execFile(bwrap, args, { timeout: 10_000 }, (err) => resolve(err === null));
    });
  }

  async run(spec: RunSpec): Promise<RunResult> {
    const rootDigest = validateDigest(
      parseRootDigest(spec.platform.get(CHROOT_ROOT_PROPERTY)),
      this.options.chroots.digestFunction,
      `platform property ${CHROOT_ROOT_PROPERTY}`,
    );
    const startedAt = new Date();
    let root: string;
    try {
      root = await this.options.chroots.get(rootDigest, spec.signal);
    } catch (err) {
      if (!spec.signal.aborted) throw err;
      return { exitCode: -1, timedOut: false, cancelled: true, startedAt, completedAt: new Date() };
    }
    const view = new ChrootView(root, spec.inputRoot);
    const program = spec.argv[0] ?? '';
    const lookup =
      program === ''
        ? { found: false as const, reason: 'an empty command', exitCode: 127 }
        : await view.findProgram(program, spec.env.PATH, spec.cwd);
    if (!lookup.found) {
      await (await open(spec.stdoutPath, 'w')).close();
      const stderr = await open(spec.stderrPath, 'w');
      try {
        await stderr.write(`remex worker: cannot run ${lookup.reason}\n`);
      } finally {
        await stderr.close();
      }
      return {
        exitCode: lookup.exitCode,
        timedOut: false,
        cancelled: false,
        startedAt,
        completedAt: new Date(),
      };
    }
    // execvp inside searches the same PATH; without one (glibc's default differs) give the path found.
    const exec = program.includes('/') || spec.env.PATH !== undefined ? program : lookup.path;
    const args = [
      '--unshare-all',
      '--die-with-parent',
      ...(await view.mountArgs()),
      '--chdir',
      spec.cwd,
      '--clearenv',
      ...Object.entries(spec.env).flatMap(([name, value]) => ['--setenv', name, value]),
      '--',
      exec,
      ...spec.argv.slice(1),
    ];
    return this.host.run({ ...spec, argv: [this.bwrap, ...args], env: {} });
  }
}

/** The root digest from the platform property, or INVALID_ARGUMENT saying what is wrong. */
export function parseRootDigest(value: string | undefined): Digest {
  const what = `platform property ${CHROOT_ROOT_PROPERTY}`;
  if (value === undefined || value === '') {
    throw invalidArgument(
      `the userchroot runner needs the ${what}: the digest ("hash/size") of the root filesystem's Directory, as printed by \`remex chroot upload\``,
    );
  }
  const match = /^([^/]*)\/(\d+)$/.exec(value);
  if (!match) throw invalidArgument(`${what} ${JSON.stringify(value)} is not a digest: expected "hash/size"`);
  return { hash: match[1]!, sizeBytes: Number(match[2]) };
}
