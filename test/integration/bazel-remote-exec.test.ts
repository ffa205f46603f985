/**
 * Remote execution end to end (issue 3's acceptance).
 *
 * 1. A real Bazel (Debian's bazel-bootstrap, 4.2.3) with --remote_executor against `remex
 *    serve` started as `npm start` starts it (embedded local workers, default config), on the
 *    fixture workspace (test/fixtures/bazel, see its README): shell actions, one action with 4
 *    outputs, a tree artifact, actions consuming others' outputs, two sh_tests, and
 *    //fail:broken. Every spawn runs remotely (Bazel's "INFO: N processes: ... remote"
 *    summary), the outputs are byte-identical to a local build's, the tests pass, and the
 *    failing action's stderr reaches Bazel.
 * 2. The same build with the execution platform asking for OSFamily=linux (the workers
 *    advertise their host's OSFamily); OSFamily=plan9 fails with FAILED_PRECONDITION naming
 *    the property.
 * 3. Two separate `remex worker` processes; the one running an action is SIGKILLed mid-action;
 *    the server gives the action to the other one and the client still gets the right result.
 *
 * Needs bazel (bazel-bootstrap), a JDK (default-jdk-headless) and gcc (build-essential);
 * scripts/setup-test-deps.sh installs them. Without them the Bazel suite fails, it does not
 * skip. The server must be built first (`npm run build`): the harness runs bin/remex.js.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readdir, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Metadata } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  actionSpawns,
  BazelWorkspace,
  remexLogErrors,
  removeTree,
  requireBazelTools,
  stopRemexChecked,
  tail,
  type BazelRun,
  type SpawnSummary,
} from '../helpers/bazel.js';
import { readBlob } from '../helpers/blobs.js';
import { clientsFor, executionClientsFor } from '../helpers/clients.js';
import { collect, executeRequest, uploadAction, type OperationUpdate } from '../helpers/execution.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));
const TEST_TIMEOUT_MS = 5 * 60_000;
/** Spawns of `bazel build //...` and of `bazel test //...` after it (fixture README). */
const BUILD_SPAWNS = 10;
const TEST_SPAWNS = 4;
const BROKEN_STDERR = 'remex-fixture: deliberate failure on stderr';

/** The non-internal runners of a summary, e.g. {remote: 10}. */
function executedBy(summary: SpawnSummary): Record<string, number> {
  return Object.fromEntries(Object.entries(summary.runners).filter(([runner]) => runner !== 'internal'));
}

/** The embedded workers' "action finished" log lines (one per action run). */
function finishedActions(log: string): { action: string; exitCode: number; code: string }[] {
  return log
    .split('\n')
    .filter((l) => l.includes('"action finished"'))
    .map((l) => JSON.parse(l) as { action: string; exitCode: number; code: string });
}

describe('Bazel 4.2.3 with --remote_executor against remex serve (embedded workers)', () => {
  let bz: BazelWorkspace | undefined;
  /** Started like `npm start`: default config, embedded workers (CPU count). */
  let remex: RemexProcess | undefined;
  /** Same, with a 2 s unschedulableTimeout, for the OSFamily=plan9 case. */
  let remexShortWait: RemexProcess | undefined;
  let remoteFlags: string[];
  let execRoot: string;
  let testLogs: string;
  let outputPaths: string[];
  /** Output file (tree artifacts expanded) -> sha256 after the local build. */
  let localOutputs: Map<string, string>;
  /** test.log of each test after the local `bazel test`. */
  let localTestLogs: Map<string, string>;

  const context = (run?: BazelRun) => bz!.context(run);
  const snapshotOutputs = () => bz!.snapshotOutputs(execRoot, outputPaths);
  const snapshotTestLogs = () => bz!.snapshotTestLogs(testLogs, { xml: false }); // test.xml has timings

  /** Every non-internal spawn ran by remote execution: no local strategy, no cache hit. */
  function expectAllRemote(run: BazelRun, spawns: number): SpawnSummary {
    const summary = bz!.summary(run);
    expect(executedBy(summary), `${summary.line}\n${context(run)}`).toEqual({ remote: spawns });
    return summary;
  }

  function expectTestsPassed(run: BazelRun): void {
    expect(run.output, context(run)).toMatch(/^\/\/test:outputs_test\s+PASSED in/m);
    expect(run.output, context(run)).toMatch(/^\/\/test:smoke_test\s+PASSED in/m);
  }

  beforeAll(async () => {
    requireBazelTools();
    bz = await BazelWorkspace.create('remex-bazel-rx-');
    bz.extraContext = () =>
      [remex, remexShortWait]
        .filter((r): r is RemexProcess => r !== undefined)
        .map((r) => `--- remex log on port ${r.port} (tail):\n${tail(r.log(), 40)}`);

    remex = await startRemex();
    remoteFlags = ['--noshow_progress', `--remote_executor=grpc://${remex.address}`];
    ({ execRoot, testLogs } = await bz.paths('--noshow_progress'));
    outputPaths = await bz.outputPaths('--noshow_progress');
    expect(outputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/tree');
    expect(outputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/multi_empty.txt');
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    if (bz && bz.history.length > 0) console.info(`bazel commands run:\n  ${bz.history.join('\n  ')}`);
    const problems: string[] = [];
    if (bz) problems.push(...(await bz.shutdown()));
    for (const r of [remex, remexShortWait]) {
      const stopped = await stopRemexChecked(r);
      if (stopped) problems.push(stopped);
    }
    await bz?.remove();
    await removeTree(remex?.dataDir);
    await removeTree(remexShortWait?.dataDir);
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }, TEST_TIMEOUT_MS);

  it(
    'local reference: build and test //... without remote flags',
    async () => {
      const build = await bz!.ok(0, 'build', '//...', '--noshow_progress');
      const summary = bz!.summary(build);
      expect(actionSpawns(summary), context(build)).toBe(BUILD_SPAWNS);
      expect(Object.keys(summary.runners).filter((r) => r.startsWith('remote'))).toEqual([]);
      localOutputs = await snapshotOutputs();
      expect(
        [...localOutputs.keys()].filter((k) => k.startsWith('bazel-out/k8-fastbuild/bin/gen/tree/')),
        'the tree artifact has 10 files',
      ).toHaveLength(10);

      const test = await bz!.ok(0, 'test', '//...', '--noshow_progress');
      expectTestsPassed(test);
      localTestLogs = await snapshotTestLogs();
      expect([...localTestLogs.keys()]).toEqual(['test/outputs_test/test.log', 'test/smoke_test/test.log']);

      // The remote builds below start from nothing local.
      await bz!.ok(0, 'clean');
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'build //... and test //... execute every action remotely; outputs and test logs match the local build',
    async () => {
      expect(localOutputs, 'needs the local build').toBeDefined();
      const before = finishedActions(remex!.log()).length;
      const build = await bz!.ok(0, 'build', '//...', ...remoteFlags);
      expectAllRemote(build, BUILD_SPAWNS);
      // Server side: the embedded workers really ran them.
      expect(finishedActions(remex!.log()).length - before, context(build)).toBe(BUILD_SPAWNS);
      expect(Object.fromEntries(await snapshotOutputs())).toEqual(Object.fromEntries(localOutputs));

      const test = await bz!.ok(0, 'test', '//...', ...remoteFlags);
      expectAllRemote(test, TEST_SPAWNS);
      expectTestsPassed(test);
      expect(test.output, 'executed, not cached').not.toMatch(/\(cached\) PASSED/);
      expect(Object.fromEntries(await snapshotTestLogs())).toEqual(Object.fromEntries(localTestLogs));
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'a failing action (//fail:broken) fails the build and its stderr reaches Bazel',
    async () => {
      const before = finishedActions(remex!.log()).length;
      const run = await bz!.ok(1, 'build', '//fail:broken', ...remoteFlags);
      expect(run.output, context(run)).toContain(BROKEN_STDERR);
      expect(run.output, context(run)).toContain('remex-fixture: some stdout');
      expect(run.output, context(run)).toMatch(/Executing genrule \/\/fail:broken failed: \(Exit 3\)/);
      // Bazel 4.2.3 leaves a failed spawn out of its summary ("2 processes: 2 internal."), so
      // prove from the server side that it ran remotely, and that Bazel did not fall back.
      expect(
        Object.keys(bz!.summary(run).runners).filter((r) => r !== 'internal' && r !== 'remote'),
        context(run),
      ).toEqual([]);
      const ran = finishedActions(remex!.log()).slice(before);
      expect(
        ran.map((a) => a.exitCode),
        context(run),
      ).toEqual([3]);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'the same remote build passes with the platform asking for OSFamily=linux',
    async () => {
      expect(localOutputs, 'needs the local build').toBeDefined();
      await bz!.ok(0, 'clean');
      // New platform properties give new action keys; --noremote_accept_cached makes sure every
      // action executes rather than being answered from the action cache.
      const flags = [
        ...remoteFlags,
        '--remote_default_exec_properties=OSFamily=linux',
        '--noremote_accept_cached',
      ];
      const build = await bz!.ok(0, 'build', '//...', ...flags);
      expectAllRemote(build, BUILD_SPAWNS);
      expect(Object.fromEntries(await snapshotOutputs())).toEqual(Object.fromEntries(localOutputs));
      const test = await bz!.ok(0, 'test', '//...', ...flags);
      expectAllRemote(test, TEST_SPAWNS);
      expectTestsPassed(test);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'a platform no worker has (OSFamily=plan9) fails with FAILED_PRECONDITION naming the property',
    async () => {
      remexShortWait = await startRemex({ config: { execution: { unschedulableTimeout: '2s' } } });
      await bz!.ok(0, 'clean');
      const run = await bz!.run(
        'build',
        '//gen:hello',
        '--noshow_progress',
        `--remote_executor=grpc://${remexShortWait.address}`,
        '--remote_default_exec_properties=OSFamily=plan9',
      );
      // Bazel exits 34 (remote error) here; any failure will do.
      expect(run.code, context(run)).not.toBe(0);
      expect(run.output, context(run)).toMatch(
        /FAILED_PRECONDITION: no worker matches the platform properties OSFamily=plan9/,
      );
      expect(run.output, context(run)).toMatch(/Executing genrule \/\/gen:hello failed/);
      // Nothing ran, locally or remotely.
      expect(finishedActions(remexShortWait.log()), context(run)).toEqual([]);
      expect(Object.keys(bz!.summary(run).runners).filter((r) => r !== 'internal')).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  it('remex logged no errors and no Node.js warnings', () => {
    expect(remexLogErrors(remex?.log() ?? ''), context()).toEqual([]);
    expect(remexLogErrors(remexShortWait?.log() ?? ''), context()).toEqual([]);
  });
});

interface WorkerProcess {
  name: string;
  child: ChildProcess;
  log(): string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** `remex worker` as a separate process, in its own process group. */
function startWorkerProcess(name: string, server: string, workDir: string): WorkerProcess {
  const child = spawn(
    process.execPath,
    [BIN, 'worker', '--server', server, '--capacity', '1', '--work-dir', workDir, '--name', name],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      detached: true,
      env: { ...process.env, REMEX_LOG_LEVEL: 'info' },
    },
  );
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return { name, child, log: () => output, exit };
}

async function waitFor<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined> | T | undefined,
) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** pid, state, ppid and process group of every process, from /proc/PID/stat. */
async function processTable(): Promise<{ pid: number; state: string; ppid: number; pgrp: number }[]> {
  const table = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    if (!stat) continue;
    // "pid (comm) state ppid pgrp ...": comm may contain spaces, so split after the last ')'.
    const [state, ppid, pgrp] = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    table.push({ pid: Number(entry), state: state!, ppid: Number(ppid), pgrp: Number(pgrp) });
  }
  return table;
}

/** Process groups of the direct children of pid. */
async function childProcessGroups(pid: number): Promise<number[]> {
  return [...new Set((await processTable()).filter((p) => p.ppid === pid).map((p) => p.pgrp))];
}

/** Processes of a group that are still alive (not zombies waiting to be reaped). */
async function liveInGroup(pgrp: number): Promise<number[]> {
  return (await processTable()).filter((p) => p.pgrp === pgrp && p.state !== 'Z').map((p) => p.pid);
}

function killGroup(pgid: number): void {
  try {
    process.kill(-pgid, 'SIGKILL');
  } catch {
    // ESRCH: already gone.
  }
}

describe('a worker killed mid-action', () => {
  let remex: RemexProcess | undefined;
  let tmp: string | undefined;
  const workers: WorkerProcess[] = [];
  let c: ReturnType<typeof clientsFor> | undefined;
  let x: ReturnType<typeof executionClientsFor> | undefined;

  const logs = () =>
    [
      ...workers.map((w) => `--- worker ${w.name} log (tail):\n${tail(w.log(), 30)}`),
      remex ? `--- remex log (tail):\n${tail(remex.log(), 30)}` : '',
    ].join('\n');

  beforeAll(async () => {
    tmp = await mkdtemp(join(tmpdir(), 'remex-worker-kill-'));
    remex = await startRemex({
      config: { execution: { botSessionTimeout: '3s', botPoll: '1s' } },
      args: ['--workers', '0'],
    });
    for (const name of ['wA', 'wB']) workers.push(startWorkerProcess(name, remex.address, join(tmp, name)));
    c = clientsFor(remex.address);
    x = executionClientsFor(remex.address);
    // Both are connected (have a bot session) before the action is submitted.
    await waitFor('both workers to create their bot sessions', 20_000, () =>
      workers.every((w) => w.log().includes('"bot session created"')) ? true : undefined,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${logs()}`);
    });
  }, 60_000);

  afterAll(async () => {
    c?.close();
    x?.close();
    const problems: string[] = [];
    for (const w of workers) {
      if (w.child.exitCode !== null || w.child.signalCode !== null) continue;
      w.child.kill('SIGTERM');
      const exited = await Promise.race([
        w.exit,
        new Promise<undefined>((r) => setTimeout(() => r(undefined), 15_000).unref()),
      ]);
      if (!exited) problems.push(`worker ${w.name} did not exit within 15 s of SIGTERM`);
      else if (exited.code !== 0)
        problems.push(`worker ${w.name} exited ${exited.code ?? exited.signal} on SIGTERM`);
      killGroup(w.child.pid!);
    }
    const stopped = await stopRemexChecked(remex);
    if (stopped) problems.push(stopped);
    await removeTree(tmp);
    await removeTree(remex?.dataDir);
    if (problems.length > 0) throw new Error(`${problems.join('\n')}\n${logs()}`);
  }, 60_000);

  it('the action runs again on the other worker and the client gets the right result', async () => {
    const started = Date.now();
    const { actionDigest } = await uploadAction(c!, ['/bin/sh', '-c', 'sleep 3; echo done > out.txt'], {
      command: {
        outputPaths: ['out.txt'],
        environmentVariables: [{ name: 'PATH', value: '/usr/bin:/bin' }],
      },
    });
    const stages: number[] = [];
    const stream = collect(
      x!.execution.execute(executeRequest({ actionDigest, skipCacheLookup: true }), new Metadata(), {
        deadline: Date.now() + 50_000,
      }),
      (u: OperationUpdate) => stages.push(u.stage),
    );
    stream.done.catch(() => undefined); // awaited below; no unhandled rejection meanwhile

    const victim = await waitFor('a worker to start the lease', 15_000, () =>
      workers.find((w) => w.log().includes('"lease started"')),
    );
    const survivor = workers.find((w) => w !== victim)!;
    // Mid-action: the command's process exists (staging is done, `sleep 3` is running).
    const actionGroups = await waitFor(`${victim.name}'s action process`, 10_000, async () => {
      const groups = await childProcessGroups(victim.child.pid!);
      return groups.length > 0 ? groups : undefined;
    });
    // SIGKILL the worker and its process group. The hosttools runner starts each action in a
    // process group of its own (detached), and a SIGKILLed worker cannot clean up, so the
    // action's `sh -c 'sleep 3; ...'` would survive it as an orphan: kill its group too.
    killGroup(victim.child.pid!);
    for (const g of actionGroups) killGroup(g);
    const killedAt = Date.now();
    expect((await victim.exit).signal).toBe('SIGKILL');

    const updates = await stream.done.catch((err: Error) => {
      throw new Error(`Execute failed: ${err.message}\n${logs()}`);
    });
    const last = updates.at(-1)!;
    const why = `stages ${stages.join(',')}; ${JSON.stringify(last.response?.status)}\n${logs()}`;
    expect(last.done, why).toBe(true);
    expect(last.response?.status?.code ?? 0, why).toBe(0);
    const result = last.response!.result!;
    expect(result.exitCode, why).toBe(0);
    // Executed by the other worker: bot ids are `{name}-{pid}-{slot}`.
    expect(result.executionMetadata?.worker, why).toMatch(
      new RegExp(`^${survivor.name}-${survivor.child.pid}-0$`),
    );
    expect(survivor.log(), why).toContain('"lease started"');
    expect(result.outputFiles.map((f) => f.path)).toEqual(['out.txt']);
    const out = result.outputFiles[0]!.digest!;
    expect((await readBlob(c!, `blobs/${out.hash}/${out.sizeBytes}`)).toString()).toBe('done\n');
    // The orphaned action is gone.
    for (const g of actionGroups) expect(await liveInGroup(g), `process group ${g}`).toEqual([]);
    const elapsed = Date.now() - started;
    console.info(
      `worker-kill: ${victim.name} killed ${killedAt - started} ms in; result from ${result.executionMetadata?.worker} after ${elapsed} ms; stages ${stages.join(',')}`,
    );
    expect(elapsed).toBeLessThan(50_000);
  }, 60_000);
});
