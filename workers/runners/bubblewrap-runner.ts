import { superviseGroup } from './process-group.js';
import { spawn } from 'node:child_process';
import { access, constants as fsConstants, open, stat } from 'node:fs/promises';
import { constants } from 'node:os';
import type { Writable } from 'node:stream';
import { failedPrecondition, invalidArgument } from '../../src/common/status.js';
import { resolveProgram } from './program-path.js';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** Exit codes a shell uses when it cannot run a program. */
const NOT_FOUND_EXIT = 127;
const NOT_EXECUTABLE_EXIT = 126;
const PROBE_TIMEOUT_MS = 10_000;

/** The platform property that asks for network access, and its values. */
export const NETWORK_PROPERTY = 'network';

export interface BubblewrapOptions {
  /** The bwrap program (default: `bwrap`, looked up in the worker's PATH). */
  bwrap?: string;
  /** Whether an action may ask for the host network with `network=on` (default false). */
  allowNetwork?: boolean;
}

/**
 * Runs the command under bubblewrap (Debian's `bwrap`): the host's root filesystem
 * read-only, the input root bind-mounted read-write at the same path (so the working
 * directory and every path in the Command stay valid), a private /tmp and /dev/shm, fresh
 * /dev and /proc, every namespace unshared (no network, a new PID namespace), exactly the
 * Command's environment (`--clearenv`), a new session, and `--die-with-parent`.
 *
 * bwrap runs in its own process group; timeout and cancel SIGKILL that group, and the
 * sandbox's PID 1 then dies (die-with-parent), which takes every process in the sandbox
 * with it, setsid()ed ones included. The same happens when the command exits and leaves
 * processes behind, and when the worker itself dies.
 *
 * Platform property `network`: `off` (default) or `on`; `on` keeps the host network and is
 * honoured only when the worker allows it, else the action fails with FAILED_PRECONDITION.
 *
 * bwrap's options (environment included) reach it through a pipe (`--args`), so they are
 * not visible in the host's process list. The program is looked up on the host first (the
 * sandbox sees the same paths), so a missing program is exit 127 with the reason on stderr,
 * as with hosttools; argv[0] is passed as given unless the Command sets no PATH.
 */
export class BubblewrapRunner implements Runner {
  private readonly bwrap: string;
  private readonly allowNetwork: boolean;

  constructor(options: BubblewrapOptions = {}) {
    this.bwrap = options.bwrap ?? 'bwrap';
    this.allowNetwork = options.allowNetwork ?? false;
  }

  /** Whether bwrap is installed and can build this runner's sandbox here (namespaces allowed). */
  static async available(bwrap = 'bwrap'): Promise<boolean> {
    return new Promise<boolean>((resolve) => {
      const child = spawn(bwrap, ['--args', '3', '--', 'true'], {
        env: bwrapEnv(),
        stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
      });
      const timer = setTimeout(() => child.kill('SIGKILL'), PROBE_TIMEOUT_MS);
      child.once('error', () => {
        clearTimeout(timer);
        resolve(false);
      });
      child.once('exit', (code) => {
        clearTimeout(timer);
        resolve(code === 0);
      });
      writeArgs(child.stdio[3] as Writable, sandboxOptions({ network: false, cwd: '/', env: {} }));
    });
  }

  async run(spec: RunSpec): Promise<RunResult> {
    const network = this.networkOf(spec.platform);
    for (const name of Object.keys(spec.env)) {
      if (name === '' || name.includes('=') || name.includes('\0')) {
        throw invalidArgument(`environment variable name ${JSON.stringify(name)} is not valid`);
      }
    }
    const startedAt = new Date();
    const stdout = await open(spec.stdoutPath, 'w');
    const stderr = await open(spec.stderrPath, 'w');
    try {
      const failed = async (exitCode: number, reason: string): Promise<RunResult> => {
        await stderr.write(`remex worker: cannot run ${reason}\n`);
        return { exitCode, timedOut: false, cancelled: false, startedAt, completedAt: new Date() };
      };
      const program = spec.argv[0];
      if (program === undefined || program === '') return await failed(NOT_FOUND_EXIT, 'an empty command');
      const lookup = await resolveProgram(program, spec.env.PATH, spec.cwd);
      if (!lookup.found) return await failed(NOT_FOUND_EXIT, lookup.reason);
      const problem = await notRunnable(lookup.path);
      if (problem) return await failed(problem.exitCode, `${JSON.stringify(lookup.path)}: ${problem.reason}`);
      if (spec.signal.aborted) {
        return { exitCode: -1, timedOut: false, cancelled: true, startedAt, completedAt: new Date() };
      }
      // Without the Command's PATH, bwrap's execvp would search a different default: pass the
      // path found.
      const argv = spec.env.PATH === undefined ? [lookup.path, ...spec.argv.slice(1)] : spec.argv;
      const options = [
        ...sandboxOptions({ network, cwd: spec.cwd, env: spec.env }),
        '--bind',
        spec.inputRoot,
        spec.inputRoot,
      ];

      const child = spawn(this.bwrap, ['--args', '3', '--', ...argv], {
        env: bwrapEnv(),
        detached: true,
        stdio: ['ignore', stdout.fd, stderr.fd, 'pipe'],
      });
      writeArgs(child.stdio[3] as Writable, options);
      const { exit: outcome, timedOut, cancelled } = await superviseGroup(child, spec);
      const completedAt = new Date();
      if (outcome instanceof Error) {
        return await failed(NOT_FOUND_EXIT, `the sandbox: ${this.bwrap}: ${outcome.message}`);
      }
      const exitCode = outcome.code ?? 128 + (outcome.signal ? (constants.signals[outcome.signal] ?? 0) : 0);
      return { exitCode, timedOut, cancelled, startedAt, completedAt };
    } finally {
      await stdout.close();
      await stderr.close();
    }
  }

  /** Whether the action gets the network: `network` is off unless `on` and the worker allows it. */
  private networkOf(platform: ReadonlyMap<string, string>): boolean {
    const value = platform.get(NETWORK_PROPERTY);
    if (value === undefined || value === 'off') return false;
    if (value !== 'on') {
      throw invalidArgument(`platform property ${NETWORK_PROPERTY}=${value}: expected "on" or "off"`);
    }
    if (!this.allowNetwork) {
      throw failedPrecondition(
        `platform property ${NETWORK_PROPERTY}=on: this worker's bubblewrap runner does not allow network access (start the worker with --allow-network)`,
      );
    }
    return true;
  }
}

/** bwrap's own environment (the sandbox's is cleared): only PATH, to find bwrap. */
function bwrapEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH ?? '/usr/bin:/bin' };
}

/** bwrap options for the sandbox, before the input root is bound in. */
function sandboxOptions(o: { network: boolean; cwd: string; env: Record<string, string> }): string[] {
  return [
    '--ro-bind',
    '/',
    '/',
    '--dev',
    '/dev',
    '--proc',
    '/proc',
    '--tmpfs',
    '/tmp',
    '--tmpfs',
    '/dev/shm',
    '--unshare-all',
    '--unshare-pid',
    ...(o.network ? ['--share-net'] : []),
    '--die-with-parent',
    '--new-session',
    '--clearenv',
    ...Object.entries(o.env).flatMap(([name, value]) => ['--setenv', name, value]),
    '--chdir',
    o.cwd,
  ];
}

/** Sends bwrap its options as NUL-terminated strings on the `--args` pipe. */
function writeArgs(pipe: Writable, args: readonly string[]): void {
  pipe.on('error', () => {
    // bwrap died before reading them; its exit says why.
  });
  pipe.end(Buffer.from(args.map((a) => `${a}\0`).join('')));
}

/** Why a program found on the host cannot be run (126 not executable, 127 missing), if it cannot. */
async function notRunnable(path: string): Promise<{ exitCode: number; reason: string } | undefined> {
  try {
    const s = await stat(path);
    if (!s.isFile()) return { exitCode: NOT_EXECUTABLE_EXIT, reason: 'is not a file (EACCES)' };
    await access(path, fsConstants.X_OK);
    return undefined;
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EACCES') return { exitCode: NOT_EXECUTABLE_EXIT, reason: 'is not executable (EACCES)' };
    return { exitCode: NOT_FOUND_EXIT, reason: `${(err as Error).message}` };
  }
}
