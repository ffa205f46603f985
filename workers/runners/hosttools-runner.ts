import { superviseGroup } from './process-group.js';
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import { constants } from 'node:os';
import { resolveProgram } from './program-path.js';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** Exit codes a shell uses when it cannot run a program. */
const NOT_FOUND_EXIT = 127;
const NOT_EXECUTABLE_EXIT = 126;

/**
 * Runs the command directly on the host, in the staged directory, with exactly the
 * Command's environment. The process leads its own process group (spawned detached), so
 * on timeout or cancellation the whole group, grandchildren included, gets SIGKILL; so
 * does anything still left in the group after the main process exits. stdout and stderr
 * go straight to their files. A program that cannot be started gives exit code 127 (not
 * found) or 126 (not executable) with the reason on stderr, as a shell would.
 */
export class HostToolsRunner implements Runner {
  async run(spec: RunSpec): Promise<RunResult> {
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
      if (spec.signal.aborted) {
        return { exitCode: -1, timedOut: false, cancelled: true, startedAt, completedAt: new Date() };
      }

      const child = spawn(lookup.path, spec.argv.slice(1), {
        argv0: program,
        cwd: spec.cwd,
        env: spec.env,
        detached: true,
        stdio: ['ignore', stdout.fd, stderr.fd],
      });
      const { exit: outcome, timedOut, cancelled } = await superviseGroup(child, spec);
      const completedAt = new Date();
      if (outcome instanceof Error) {
        const code = (outcome as NodeJS.ErrnoException).code;
        const exitCode = code === 'EACCES' || code === 'ENOEXEC' ? NOT_EXECUTABLE_EXIT : NOT_FOUND_EXIT;
        return await failed(exitCode, `${JSON.stringify(lookup.path)}: ${outcome.message}`);
      }
      const exitCode = outcome.code ?? 128 + (outcome.signal ? (constants.signals[outcome.signal] ?? 0) : 0);
      return { exitCode, timedOut, cancelled, startedAt, completedAt };
    } finally {
      await stdout.close();
      await stderr.close();
    }
  }
}
