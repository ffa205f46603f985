/**
 * Shared driver for the Bazel integration tests: Debian's Bazel 4.2.3 (bazel-bootstrap) on
 * the fixture workspace in test/fixtures/bazel (see its README for the flags and gotchas
 * this encodes: a private --output_user_root, --max_idle_secs=60, `bazel shutdown` run from
 * the workspace, chmod before rm).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { chmod, cp, lstat, mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RemexProcess } from './remex-process.js';

export const BAZEL_FIXTURE = fileURLToPath(new URL('../fixtures/bazel/', import.meta.url));
/** Wall-clock limit of one bazel command (the client is killed beyond it). */
export const BAZEL_COMMAND_TIMEOUT_MS = 5 * 60_000;

/** Tool on PATH -> the Debian package that provides it (installed by scripts/setup-test-deps.sh). */
const REQUIRED_TOOLS: [tool: string, pkg: string][] = [
  ['bazel', 'bazel-bootstrap'],
  ['java', 'default-jdk-headless'],
  // The Bazel client needs a JDK (javac on PATH or JAVA_HOME), a JRE is not enough.
  ['javac', 'default-jdk-headless'],
  // Needed even though nothing is compiled: sh_test analysis autodetects a C++ toolchain.
  ['gcc', 'build-essential'],
];

export function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, tool)));
}

/** Throws (so the suite fails rather than skips) when bazel, a JDK or gcc is missing. */
export function requireBazelTools(): void {
  const missing = REQUIRED_TOOLS.filter(([tool]) => !onPath(tool));
  if (missing.length === 0) return;
  const pkgs = [...new Set(missing.map(([, pkg]) => pkg))];
  throw new Error(
    `Bazel integration test: missing ${missing.map(([t]) => t).join(', ')} on PATH. ` +
      `Install the Debian packages ${pkgs.join(' ')} (scripts/setup-test-deps.sh installs ` +
      `bazel-bootstrap default-jdk-headless build-essential).`,
  );
}

export interface BazelRun {
  args: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  /** stdout and stderr interleaved as they arrived. */
  output: string;
  ms: number;
}

/** "INFO: 17 processes: 10 remote cache hit, 7 internal." -> {total: 17, runners: {...}}. */
export interface SpawnSummary {
  line: string;
  total: number;
  runners: Record<string, number>;
}

/** The last "INFO: N processes: ..." line of a bazel command's output, parsed. */
export function parseSummary(output: string): SpawnSummary | undefined {
  const lines = output.split('\n').filter((l) => /^INFO: \d+ process(?:es)?[.:]/.test(l));
  const line = lines.at(-1)?.trim();
  if (line === undefined) return undefined;
  const m = /^INFO: (\d+) process(?:es)?(?:: (.*))?\.$/.exec(line);
  if (!m) throw new Error(`unparseable spawn summary line: ${line}`);
  const runners: Record<string, number> = {};
  for (const part of (m[2] ?? '').split(', ').filter(Boolean)) {
    const pm = /^(\d+) (.+)$/.exec(part);
    if (!pm) throw new Error(`unparseable spawn summary entry "${part}" in: ${line}`);
    runners[pm[2]!] = Number(pm[1]);
  }
  return { line, total: Number(m[1]), runners };
}

/** Spawns that really ran (or would have run) an action: everything but Bazel's internal ones. */
export function actionSpawns(summary: SpawnSummary): number {
  return Object.entries(summary.runners)
    .filter(([runner]) => runner !== 'internal')
    .reduce((sum, [, n]) => sum + n, 0);
}

export function tail(text: string, lines = 60): string {
  return text.split('\n').slice(-lines).join('\n');
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Every regular file below dir (following nothing), relative to dir. */
export async function walkFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (d: string): Promise<void> => {
    for (const entry of await readdir(d, { withFileTypes: true })) {
      const p = join(d, entry.name);
      if (entry.isDirectory()) await visit(p);
      else out.push(relative(dir, p));
    }
  };
  await visit(dir);
  return out.sort();
}

/** Makes every directory below dir writable again (Bazel leaves outputs read-only), so rm works. */
export async function chmodTree(dir: string): Promise<void> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await chmod(dir, 0o755).catch(() => {});
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) await chmodTree(join(dir, entry.name));
  }
}

/** chmod, then rm -rf. */
export async function removeTree(dir: string | undefined): Promise<void> {
  if (!dir) return;
  await chmodTree(dir);
  await rm(dir, { recursive: true, force: true });
}

/**
 * One copy of the fixture workspace with its own output root (hence its own Bazel server),
 * the bazelrc from prepare.sh, and a record of every command run, for failure messages.
 */
export class BazelWorkspace {
  readonly history: string[] = [];
  /** More text for failure messages, e.g. the tail of the remex log. */
  extraContext: () => string[] = () => [];

  private constructor(
    /** Temporary directory holding everything below. */
    readonly tmp: string,
    readonly workspace: string,
    readonly outputUserRoot: string,
    readonly startupFlags: string[],
  ) {}

  /** Copies the workspace into a new temporary directory and runs prepare.sh there. */
  static async create(prefix = 'remex-bazel-it-'): Promise<BazelWorkspace> {
    const tmp = await mkdtemp(join(tmpdir(), prefix));
    const prepDir = join(tmp, 'prep');
    const outputUserRoot = join(tmp, 'root');
    // A copy, so nothing in the repository is touched and the output base is private to this run.
    const workspace = join(tmp, 'workspace');
    await cp(join(BAZEL_FIXTURE, 'workspace'), workspace, { recursive: true });
    await new Promise<void>((resolve, reject) => {
      const child = spawn('bash', [join(BAZEL_FIXTURE, 'prepare.sh'), prepDir], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
      child.once('error', reject);
      child.once('close', (code) =>
        code === 0 ? resolve() : reject(new Error(`prepare.sh exited ${code}:\n${stderr}`)),
      );
    });
    const startupFlags = [
      '--nohome_rc',
      `--bazelrc=${join(prepDir, 'bazelrc')}`,
      `--output_user_root=${outputUserRoot}`,
      // A server left behind by a killed test run exits by itself.
      '--max_idle_secs=60',
    ];
    // Pin the server JDK to the distribution's, whatever JAVA_HOME the caller has.
    if (existsSync('/usr/lib/jvm/default-java/bin/java'))
      startupFlags.push('--server_javabase=/usr/lib/jvm/default-java');
    return new BazelWorkspace(tmp, workspace, outputUserRoot, startupFlags);
  }

  /** The commands run so far, the output tail of `run` and extraContext(), for an assertion message. */
  context(run?: BazelRun): string {
    const parts = [`bazel commands so far:\n  ${this.history.join('\n  ')}`];
    if (run)
      parts.push(
        `--- tail of \`bazel ${run.args.join(' ')}\` (exit ${run.code ?? run.signal}):\n${tail(run.output)}`,
      );
    parts.push(...this.extraContext());
    return parts.join('\n');
  }

  /** Runs one bazel command in the workspace, with the startup flags. Never throws on exit code. */
  run(...args: string[]): Promise<BazelRun> {
    const full = [...this.startupFlags, ...args];
    const started = Date.now();
    return new Promise((resolve, reject) => {
      // detached: own process group, so a hung client can be killed with everything it started.
      const child = spawn('bazel', full, {
        cwd: this.workspace,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
      const timer = setTimeout(() => {
        output += `\n[test] bazel ${args[0]} timed out after ${BAZEL_COMMAND_TIMEOUT_MS} ms, killing it\n`;
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }, BAZEL_COMMAND_TIMEOUT_MS);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        const run = { args, code, signal, output, ms: Date.now() - started };
        const summary = parseSummary(output)?.line;
        this.history.push(
          `bazel ${args.join(' ')} -> exit ${code ?? signal}, ${run.ms} ms${summary ? `, ${summary}` : ''}`,
        );
        resolve(run);
      });
    });
  }

  /** Runs a bazel command and throws with its output unless it exits with `want`. */
  async ok(want: number, ...args: string[]): Promise<BazelRun> {
    const run = await this.run(...args);
    if (run.code !== want)
      throw new Error(
        `bazel ${args.join(' ')} exited ${run.code ?? run.signal}, expected ${want}\n${this.context(run)}`,
      );
    return run;
  }

  /** The parsed spawn summary of a run; throws when there is none. */
  summary(run: BazelRun): SpawnSummary {
    const summary = parseSummary(run.output);
    if (!summary)
      throw new Error(
        `no "INFO: N processes" line in the output of bazel ${run.args.join(' ')}\n${this.context(run)}`,
      );
    return summary;
  }

  /** `bazel info`: the execution root and the test logs directory. */
  async paths(...flags: string[]): Promise<{ execRoot: string; testLogs: string }> {
    const info = await this.ok(0, 'info', 'execution_root', 'bazel-testlogs', ...flags);
    const lines = Object.fromEntries(
      info.output
        .split('\n')
        .map((l) => /^(execution_root|bazel-testlogs): (.+)$/.exec(l.trim()))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => [m[1]!, m[2]!]),
    );
    const execRoot = lines.execution_root;
    const testLogs = lines['bazel-testlogs'];
    if (!execRoot || !testLogs) throw new Error(`bazel info printed no paths\n${this.context(info)}`);
    return { execRoot, testLogs };
  }

  /** Execroot-relative paths of the outputs of all non-manual targets (files and tree artifacts). */
  outputPaths(...flags: string[]): Promise<string[]> {
    // cquery also sees manual targets: leave them out.
    return this.outputPathsOf('//... except attr(tags, "\\bmanual\\b", //...)', ...flags);
  }

  /** Execroot-relative paths of the outputs of the targets a cquery expression names, e.g. "//a:x + //a:y". */
  async outputPathsOf(expression: string, ...flags: string[]): Promise<string[]> {
    const cq = await this.ok(
      0,
      'cquery',
      expression,
      '--output=starlark',
      '--starlark:expr="\\n".join([f.path for f in target.files.to_list()])',
      ...flags,
    );
    return [
      ...new Set(
        cq.output
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l.startsWith('bazel-out/')),
      ),
    ].sort();
  }

  /** sha256 of every output file (tree artifacts expanded), keyed by execroot-relative path. */
  async snapshotOutputs(execRoot: string, outputPaths: string[]): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    for (const p of outputPaths) {
      const abs = join(execRoot, p);
      const st = await lstat(abs).catch(() => undefined);
      if (!st) throw new Error(`output ${p} is missing from the execroot\n${this.context()}`);
      if (st.isDirectory()) {
        for (const f of await walkFiles(abs)) result.set(`${p}/${f}`, await sha256File(join(abs, f)));
      } else {
        result.set(p, await sha256File(abs));
      }
    }
    return result;
  }

  /** sha256 of the test.log (and, with xml, test.xml) of every test below testLogs. */
  async snapshotTestLogs(testLogs: string, { xml = true } = {}): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    const pattern = xml ? /(^|\/)test\.(log|xml)$/ : /(^|\/)test\.log$/;
    for (const f of await walkFiles(testLogs)) {
      if (pattern.test(f)) result.set(f, await sha256File(join(testLogs, f)));
    }
    return result;
  }

  /**
   * `bazel shutdown` from the workspace (elsewhere it targets another output base), then
   * SIGKILL for any server that did not go away. Returns the problems found.
   */
  async shutdown(): Promise<string[]> {
    const problems: string[] = [];
    const down = await this.run('shutdown').catch((e: Error) => ({ code: -1, output: String(e) }));
    if (down.code !== 0) problems.push(`bazel shutdown exited ${down.code}: ${tail(down.output, 10)}`);
    for (const base of await readdir(this.outputUserRoot).catch(() => [] as string[])) {
      const pid = Number(
        await readFile(join(this.outputUserRoot, base, 'server', 'server.pid.txt'), 'utf8').catch(() => ''),
      );
      if (pid > 0) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }
    return problems;
  }

  /** Deletes the temporary directory (outputs are read-only: chmod first). */
  remove(): Promise<void> {
    return removeTree(this.tmp);
  }
}

/**
 * SIGTERM, then waits (up to 30 s) for remex to exit. Returns a problem description unless
 * it exited with 0; SIGKILLs it after the 30 s.
 */
export async function stopRemexChecked(remex: RemexProcess | undefined): Promise<string | undefined> {
  if (!remex) return undefined;
  const code = await Promise.race([
    remex.stop(),
    new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000).unref()),
  ]);
  if (code === 'timeout') {
    remex.child.kill('SIGKILL');
    return `remex did not exit within 30 s of SIGTERM\n${tail(remex.log(), 40)}`;
  }
  if (code !== 0) return `remex exited with ${code} after SIGTERM, expected 0\n${tail(remex.log(), 40)}`;
  return undefined;
}

/** Lines of a remex log at level error or above, and Node.js warnings other than deprecations. */
export function remexLogErrors(log: string): string[] {
  return log.split('\n').filter((l) => {
    // e.g. "(node:123) TimeoutOverflowWarning: ..." (deprecations are not the server's doing).
    if (/^\(node:\d+\) (?!DeprecationWarning|ExperimentalWarning)\w*Warning/.test(l)) return true;
    try {
      return (JSON.parse(l) as { level?: number }).level! >= 50;
    } catch {
      return false;
    }
  });
}
