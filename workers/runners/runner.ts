/**
 * How a worker runs one command. The hosttools runner runs it directly on the host;
 * sandboxed runners (bubblewrap, userchroot, docker) implement the same interface.
 */
export interface RunSpec {
  /** argv; argv[0] is the program: absolute, relative to cwd (contains '/'), or looked up in env.PATH. */
  argv: string[];
  /** The whole environment of the process: exactly the Command's environment_variables. */
  env: Record<string, string>;
  /** Absolute working directory, inside the input root. */
  cwd: string;
  /** Absolute path of the staged input root. */
  inputRoot: string;
  /** Kill the process (and everything it started) after this long; unset means no limit. */
  timeoutMs?: number;
  /** Aborting kills the process and everything it started. */
  signal: AbortSignal;
  /** Files that receive stdout and stderr (created or truncated); output is never buffered whole. */
  stdoutPath: string;
  stderrPath: string;
  /**
   * The action's platform properties (Action.platform, else Command.platform), name → value.
   * Runners read their options here (network, container-image, chrootRootDigest, ...) and
   * fail the action with a clear status when they cannot honour one.
   */
  platform: ReadonlyMap<string, string>;
}

export interface RunResult {
  /** The exit code; 128 + the signal number when killed by a signal. */
  exitCode: number;
  timedOut: boolean;
  cancelled: boolean;
  startedAt: Date;
  completedAt: Date;
}

export interface Runner {
  run(spec: RunSpec): Promise<RunResult>;
}
