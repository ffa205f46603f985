/**
 * End to end: a real Bazel (Debian's bazel-bootstrap, 4.2.3) uses a real `remex serve` as its
 * --remote_cache. The fixture workspace (test/fixtures/bazel, see its README) has 10 spawns in
 * `build //...`: several actions, one action with 4 outputs (one empty, one executable), a tree
 * artifact (directory output), a 20 MiB output and a tool built in the exec configuration, plus
 * two sh_tests.
 *
 * Acceptance: after `bazel clean` the rebuild takes every spawn from the remote cache (Bazel's
 * own "INFO: N processes: M remote cache hit, ..." summary says so) and all outputs are
 * byte-identical to the ones built locally; the tests come back "(cached) PASSED".
 *
 * Needs bazel (bazel-bootstrap), a JDK (default-jdk-headless) and gcc (build-essential);
 * scripts/setup-test-deps.sh installs them. Without them the suite fails, it does not skip.
 * The server must be built first (`npm run build`): the harness runs bin/remex.js.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream, existsSync } from 'node:fs';
import { chmod, cp, lstat, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/bazel/', import.meta.url));
const BIG_SIZE = 20 * 1024 * 1024;
const BIG_SHA256 = '81ce5739fcd9a1b8b1a2107442bd36a345502dd325bf854068b1bcd3a951eb70';
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
/** Wall-clock limit of one bazel command (the client is killed beyond it). */
const COMMAND_TIMEOUT_MS = 5 * 60_000;
const TEST_TIMEOUT_MS = 10 * 60_000;

/** Tool on PATH -> the Debian package that provides it (installed by scripts/setup-test-deps.sh). */
const REQUIRED_TOOLS: [tool: string, pkg: string][] = [
  ['bazel', 'bazel-bootstrap'],
  ['java', 'default-jdk-headless'],
  // The Bazel client needs a JDK (javac on PATH or JAVA_HOME), a JRE is not enough.
  ['javac', 'default-jdk-headless'],
  // Needed even though nothing is compiled: sh_test analysis autodetects a C++ toolchain.
  ['gcc', 'build-essential'],
];

function onPath(tool: string): boolean {
  return (process.env.PATH ?? '').split(delimiter).some((dir) => dir !== '' && existsSync(join(dir, tool)));
}

interface BazelRun {
  args: string[];
  code: number | null;
  signal: NodeJS.Signals | null;
  /** stdout and stderr interleaved as they arrived. */
  output: string;
  ms: number;
}

/** "INFO: 17 processes: 10 remote cache hit, 7 internal." -> {total: 17, runners: {...}}. */
interface SpawnSummary {
  line: string;
  total: number;
  runners: Record<string, number>;
}

function parseSummary(output: string): SpawnSummary | undefined {
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
function actionSpawns(summary: SpawnSummary): number {
  return Object.entries(summary.runners)
    .filter(([runner]) => runner !== 'internal')
    .reduce((sum, [, n]) => sum + n, 0);
}

function tail(text: string, lines = 60): string {
  return text.split('\n').slice(-lines).join('\n');
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** Every regular file below dir (following nothing), relative to dir. */
async function walkFiles(dir: string): Promise<string[]> {
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

describe('Bazel 4.2.3 with --remote_cache against remex serve', () => {
  let tmp: string | undefined;
  let prepDir: string;
  let workspace: string;
  let outputUserRoot: string;
  let remex: RemexProcess | undefined;
  let startupFlags: string[];
  let remoteFlags: string[];
  let execRoot: string;
  let testLogs: string;
  /** Execroot-relative paths of the outputs of all non-manual targets (files and tree artifacts). */
  let outputPaths: string[];
  /** Output file (tree artifacts expanded) -> sha256, after the cold local build. */
  let coldOutputs: Map<string, string>;
  let coldSummary: SpawnSummary;
  /** Every bazel command so far, for failure messages. */
  const history: string[] = [];

  function context(run?: BazelRun): string {
    const parts = [`bazel commands so far:\n  ${history.join('\n  ')}`];
    if (run)
      parts.push(
        `--- tail of \`bazel ${run.args.join(' ')}\` (exit ${run.code ?? run.signal}):\n${tail(run.output)}`,
      );
    if (remex) parts.push(`--- remex log (tail):\n${tail(remex.log(), 40)}`);
    return parts.join('\n');
  }

  /** Runs one bazel command in the workspace, with the test's startup flags. Never throws on exit code. */
  function bazel(...args: string[]): Promise<BazelRun> {
    const full = [...startupFlags, ...args];
    const started = Date.now();
    return new Promise((resolve, reject) => {
      // detached: own process group, so a hung client can be killed with everything it started.
      const child = spawn('bazel', full, {
        cwd: workspace,
        stdio: ['ignore', 'pipe', 'pipe'],
        detached: true,
      });
      let output = '';
      child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
      child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
      const timer = setTimeout(() => {
        output += `\n[test] bazel ${args[0]} timed out after ${COMMAND_TIMEOUT_MS} ms, killing it\n`;
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          child.kill('SIGKILL');
        }
      }, COMMAND_TIMEOUT_MS);
      child.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      child.once('close', (code, signal) => {
        clearTimeout(timer);
        const run = { args, code, signal, output, ms: Date.now() - started };
        const summary = parseSummary(output)?.line;
        history.push(
          `bazel ${args.join(' ')} -> exit ${code ?? signal}, ${run.ms} ms${summary ? `, ${summary}` : ''}`,
        );
        resolve(run);
      });
    });
  }

  /** Runs a bazel command and fails the test with its output unless it exits with `want`. */
  async function bazelOk(want: number, ...args: string[]): Promise<BazelRun> {
    const run = await bazel(...args);
    if (run.code !== want)
      throw new Error(
        `bazel ${args.join(' ')} exited ${run.code ?? run.signal}, expected ${want}\n${context(run)}`,
      );
    return run;
  }

  /** sha256 of every output file of //... (tree artifacts expanded), keyed by execroot-relative path. */
  async function snapshotOutputs(): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    for (const p of outputPaths) {
      const abs = join(execRoot, p);
      const st = await lstat(abs).catch(() => undefined);
      if (!st) throw new Error(`output ${p} is missing from the execroot\n${context()}`);
      if (st.isDirectory()) {
        for (const f of await walkFiles(abs)) result.set(`${p}/${f}`, await sha256File(join(abs, f)));
      } else {
        result.set(p, await sha256File(abs));
      }
    }
    return result;
  }

  /** test.log and test.xml of every test: they are cached outputs too. */
  async function snapshotTestLogs(): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    for (const f of await walkFiles(testLogs)) {
      if (/(^|\/)test\.(log|xml)$/.test(f)) result.set(f, await sha256File(join(testLogs, f)));
    }
    return result;
  }

  function expectAllFromCache(run: BazelRun, expectedHits: number): SpawnSummary {
    const summary = parseSummary(run.output);
    if (!summary)
      throw new Error(
        `no "INFO: N processes" line in the output of bazel ${run.args.join(' ')}\n${context(run)}`,
      );
    const executed = Object.keys(summary.runners).filter((r) => r !== 'remote cache hit' && r !== 'internal');
    expect(
      executed,
      `spawns that did not come from the remote cache: ${summary.line}\n${context(run)}`,
    ).toEqual([]);
    expect(summary.runners['remote cache hit'], `${summary.line}\n${context(run)}`).toBe(expectedHits);
    return summary;
  }

  /** Bazel reports failed cache reads/writes only as warnings (the build still succeeds): fail on them. */
  function expectNoRemoteCacheErrors(run: BazelRun): void {
    const warnings = run.output.split('\n').filter((l) => /^WARNING: .*Remote Cache/i.test(l));
    if (warnings.length === 0) return;
    const causes = [
      ...new Set(
        run.output
          .split('\n')
          .filter((l) => /StatusRuntimeException|Error while (up|down)loading/.test(l))
          .map((l) => l.trim()),
      ),
    ];
    throw new Error(
      `bazel ${run.args.join(' ')} reported remote cache errors:\n${warnings.join('\n')}\n` +
        `causes (deduplicated):\n  ${causes.slice(0, 20).join('\n  ')}\n${context()}`,
    );
  }

  beforeAll(async () => {
    const missing = REQUIRED_TOOLS.filter(([tool]) => !onPath(tool));
    if (missing.length > 0) {
      const pkgs = [...new Set(missing.map(([, pkg]) => pkg))];
      throw new Error(
        `Bazel integration test: missing ${missing.map(([t]) => t).join(', ')} on PATH. ` +
          `Install the Debian packages ${pkgs.join(' ')} (scripts/setup-test-deps.sh installs ` +
          `bazel-bootstrap default-jdk-headless build-essential).`,
      );
    }

    tmp = await mkdtemp(join(tmpdir(), 'remex-bazel-it-'));
    prepDir = join(tmp, 'prep');
    outputUserRoot = join(tmp, 'root');
    // A copy, so nothing in the repository is touched and the output base is private to this run.
    workspace = join(tmp, 'workspace');
    await cp(join(FIXTURE, 'workspace'), workspace, { recursive: true });
    await new Promise<void>((resolve, reject) => {
      const child = spawn('bash', [join(FIXTURE, 'prepare.sh'), prepDir], {
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
      child.once('error', reject);
      child.once('close', (code) =>
        code === 0 ? resolve() : reject(new Error(`prepare.sh exited ${code}:\n${stderr}`)),
      );
    });

    startupFlags = [
      '--nohome_rc',
      `--bazelrc=${join(prepDir, 'bazelrc')}`,
      `--output_user_root=${outputUserRoot}`,
      // A server left behind by a killed test run exits by itself.
      '--max_idle_secs=60',
    ];
    // Pin the server JDK to the distribution's, whatever JAVA_HOME the caller has.
    if (existsSync('/usr/lib/jvm/default-java/bin/java'))
      startupFlags.push('--server_javabase=/usr/lib/jvm/default-java');

    remex = await startRemex();
    remoteFlags = ['--noshow_progress', `--remote_cache=grpc://${remex.address}`];

    const info = await bazelOk(0, 'info', 'execution_root', 'bazel-testlogs', ...remoteFlags);
    const infoLines = Object.fromEntries(
      info.output
        .split('\n')
        .map((l) => /^(execution_root|bazel-testlogs): (.+)$/.exec(l.trim()))
        .filter((m): m is RegExpExecArray => m !== null)
        .map((m) => [m[1]!, m[2]!]),
    );
    execRoot = infoLines.execution_root!;
    testLogs = infoLines['bazel-testlogs']!;
    if (!execRoot || !testLogs) throw new Error(`bazel info printed no paths\n${context(info)}`);

    // Outputs of every target //... builds (cquery also sees manual targets: leave them out).
    const cq = await bazelOk(
      0,
      'cquery',
      '//... except attr(tags, "\\bmanual\\b", //...)',
      '--output=starlark',
      '--starlark:expr="\\n".join([f.path for f in target.files.to_list()])',
      ...remoteFlags,
    );
    outputPaths = [
      ...new Set(
        cq.output
          .split('\n')
          .map((l) => l.trim())
          .filter((l) => l.startsWith('bazel-out/')),
      ),
    ].sort();
    expect(outputPaths, context(cq)).toContain('bazel-out/k8-fastbuild/bin/gen/big.bin');
    expect(outputPaths, context(cq)).toContain('bazel-out/k8-fastbuild/bin/gen/tree');
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    if (history.length > 0) console.info(`bazel commands run:\n  ${history.join('\n  ')}`);
    const problems: string[] = [];
    if (tmp && workspace && startupFlags) {
      // Must run in the workspace: elsewhere `shutdown` targets another output base.
      const down = await bazel('shutdown').catch((e: Error) => ({ code: -1, output: String(e) }));
      if (down.code !== 0) problems.push(`bazel shutdown exited ${down.code}: ${tail(down.output, 10)}`);
      // Fallback: kill a server that did not go away.
      for (const base of await readdir(outputUserRoot).catch(() => [] as string[])) {
        const pid = Number(
          await readFile(join(outputUserRoot, base, 'server', 'server.pid.txt'), 'utf8').catch(() => ''),
        );
        if (pid > 0) {
          try {
            process.kill(pid, 'SIGKILL');
          } catch {
            // already gone
          }
        }
      }
    }
    if (remex) {
      const code = await Promise.race([
        remex.stop(),
        new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 30_000).unref()),
      ]);
      if (code === 'timeout') {
        remex.child.kill('SIGKILL');
        problems.push(`remex did not exit within 30 s of SIGTERM\n${tail(remex.log(), 40)}`);
      } else if (code !== 0) {
        problems.push(`remex exited with ${code} after SIGTERM, expected 0\n${tail(remex.log(), 40)}`);
      }
    }
    for (const dir of [tmp, remex?.dataDir]) {
      if (!dir) continue;
      // Bazel leaves outputs read-only.
      await chmodTree(dir);
      await rm(dir, { recursive: true, force: true });
    }
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }, TEST_TIMEOUT_MS);

  it(
    'cold build runs every action locally and uploads the results to remex',
    async () => {
      const run = await bazelOk(0, 'build', '//...', ...remoteFlags);
      expectNoRemoteCacheErrors(run);
      const summary = parseSummary(run.output);
      if (!summary) throw new Error(`no spawn summary\n${context(run)}`);
      coldSummary = summary;
      // A fresh cache: nothing can be a hit; the fixture has 10 spawns (README).
      expect(summary.runners['remote cache hit'] ?? 0, context(run)).toBe(0);
      expect(actionSpawns(summary), context(run)).toBe(10);

      coldOutputs = await snapshotOutputs();
      const bin = 'bazel-out/k8-fastbuild/bin/gen';
      expect(coldOutputs.get(`${bin}/big.bin`)).toBe(BIG_SHA256);
      expect((await stat(join(execRoot, bin, 'big.bin'))).size).toBe(BIG_SIZE);
      expect(coldOutputs.get(`${bin}/multi_empty.txt`)).toBe(EMPTY_SHA256);
      expect(coldOutputs.get(`${bin}/tree/nested/empty.txt`)).toBe(EMPTY_SHA256);
      const treeFiles = [...coldOutputs.keys()].filter((k) => k.startsWith(`${bin}/tree/`));
      expect(treeFiles, 'the tree artifact has 10 files').toHaveLength(10);
      expect(coldOutputs.has('bazel-out/host/bin/gen/tool.sh'), 'exec-configuration output').toBe(true);

      // Server side: the blobs really landed in remex's disk CAS, including the 20 MiB one,
      // and the action results in its action cache.
      const casFiles = await walkFiles(join(remex!.dataDir, 'cas'));
      const bigBlob = casFiles.find((f) => f.split('/').at(-1)!.startsWith(BIG_SHA256));
      expect(bigBlob, `big.bin's blob in ${remex!.dataDir}/cas:\n${casFiles.join('\n')}`).toBeDefined();
      expect((await stat(join(remex!.dataDir, 'cas', bigBlob!))).size).toBeGreaterThanOrEqual(BIG_SIZE);
      expect(await sha256File(join(remex!.dataDir, 'cas', bigBlob!))).toBe(BIG_SHA256);
      const acEntries = await walkFiles(join(remex!.dataDir, 'ac'));
      expect(acEntries.length, `action cache entries:\n${acEntries.join('\n')}`).toBeGreaterThanOrEqual(
        actionSpawns(summary),
      );
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'after bazel clean, the rebuild takes every action from the remote cache, byte-identical',
    async () => {
      expect(coldOutputs, 'needs the cold build').toBeDefined();
      await bazelOk(0, 'clean');
      expect(
        existsSync(join(execRoot, 'bazel-out/k8-fastbuild/bin/gen/big.bin')),
        'clean removed the outputs',
      ).toBe(false);

      const run = await bazelOk(0, 'build', '//...', ...remoteFlags);
      expectNoRemoteCacheErrors(run);
      expectAllFromCache(run, actionSpawns(coldSummary));

      const rebuilt = await snapshotOutputs();
      expect([...rebuilt.keys()]).toEqual([...coldOutputs.keys()]);
      expect(Object.fromEntries(rebuilt)).toEqual(Object.fromEntries(coldOutputs));
      // (No check of mode bits: Bazel 4 makes every output r-x, local or downloaded.)
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'bazel test passes, and after bazel clean the test results come from the remote cache',
    async () => {
      expect(coldOutputs, 'needs the cold build').toBeDefined();
      // First run: the 4 test spawns (2 test runs + 2 test.xml generations) execute and are uploaded.
      const first = await bazelOk(0, 'test', '//...', ...remoteFlags);
      expectNoRemoteCacheErrors(first);
      expect(first.output, context(first)).toMatch(/\/\/test:outputs_test\s+PASSED/);
      expect(first.output, context(first)).toMatch(/\/\/test:smoke_test\s+PASSED/);
      const firstSummary = parseSummary(first.output);
      expect(firstSummary && actionSpawns(firstSummary), context(first)).toBe(4);
      const logs = await snapshotTestLogs();
      expect([...logs.keys()].sort(), 'test logs').toEqual([
        'test/outputs_test/test.log',
        'test/outputs_test/test.xml',
        'test/smoke_test/test.log',
        'test/smoke_test/test.xml',
      ]);

      await bazelOk(0, 'clean');
      // Build and test actions together: 10 + 4, all from the cache.
      const run = await bazelOk(0, 'test', '//...', ...remoteFlags);
      expectNoRemoteCacheErrors(run);
      expectAllFromCache(run, actionSpawns(coldSummary) + 4);
      expect(run.output, context(run)).toMatch(/\/\/test:outputs_test\s+\(cached\) PASSED/);
      expect(run.output, context(run)).toMatch(/\/\/test:smoke_test\s+\(cached\) PASSED/);

      expect(Object.fromEntries(await snapshotOutputs())).toEqual(Object.fromEntries(coldOutputs));
      expect(Object.fromEntries(await snapshotTestLogs())).toEqual(Object.fromEntries(logs));
    },
    TEST_TIMEOUT_MS,
  );

  it('remex logged no errors and no Node.js warnings', () => {
    const lines = remex!.log().split('\n');
    const errors = lines.filter((l) => {
      // e.g. "(node:123) TimeoutOverflowWarning: ..." (deprecations are not the server's doing).
      if (/^\(node:\d+\) (?!DeprecationWarning|ExperimentalWarning)\w*Warning/.test(l)) return true;
      try {
        return (JSON.parse(l) as { level?: number }).level! >= 50;
      } catch {
        return false;
      }
    });
    expect(errors, context()).toEqual([]);
  });
});

async function chmodTree(dir: string): Promise<void> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await chmod(dir, 0o755).catch(() => {});
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    if (entry.isDirectory()) await chmodTree(join(dir, entry.name));
  }
}
