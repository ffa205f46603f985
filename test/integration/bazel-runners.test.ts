/**
 * Runners under Bazel (issue 4's acceptance): "A Bazel build whose execution platform asks for
 * `runner=bubblewrap` (and then `runner=docker` with a `container-image`) succeeds with the
 * right outputs."
 *
 * Debian's Bazel 4.2.3 with --remote_executor against `remex serve` started as `npm start`
 * starts it (default config, embedded local workers, which offer every runner this host can
 * run), on the fixture workspace (test/fixtures/bazel, see its README). The execution platform
 * is given with --remote_default_exec_properties, so every action of the build carries it:
 *
 * 1. runner=bubblewrap: `build //...` and `test //...` execute every action remotely (Bazel's
 *    summary says "N remote" and nothing else), the outputs and test logs are byte-identical to
 *    a local build's, and the tests pass.
 * 2. runner=docker, container-image=docker://remex-test/busybox:1 (the busybox-static-only
 *    image scripts/docker-env.sh builds: no bash, no coreutils). Bazel runs genrules with
 *    `/bin/bash -c`, so this variant passes --shell_executable=/bin/sh (busybox ash, which
 *    handles genrule-setup.sh's `set -euo pipefail`) and builds the targets busybox can run:
 *    all of //gen except //gen:reversed, whose generated tool is a `#!/bin/bash` script. That
 *    still covers a multi-output action (with an empty and an executable output), a 20 MiB
 *    output, a tree artifact, and actions consuming others' outputs. The sh_tests cannot run in
 *    the image at all: Bazel starts every test through tools/test/test-setup.sh, a `#!/bin/bash`
 *    script. Outputs made by busybox's applets are byte-identical to the local (bash +
 *    coreutils) build's. Without --shell_executable the same platform fails with tini's "exec
 *    /bin/bash failed", itself proof that the action ran in the image.
 *
 * Where an action really ran is shown by //runners:probe (manual), built in the same invocation
 * as the outputs it vouches for: it writes what its sandbox looks like from inside (PID 1 of its
 * PID namespace, /bin/sh, bash, os-release, whether /usr is writable, its network interfaces,
 * the root directory). Built with runner=hosttools first, for contrast.
 *
 * Every variant uses --noremote_accept_cached after a `bazel clean`, so every action executes.
 * The remex log shows that the local workers offer bubblewrap and docker (their "worker started"
 * line lists the `runner` values), and that the workers ran exactly the actions Bazel counted.
 *
 * Needs bazel (bazel-bootstrap), a JDK (default-jdk-headless), gcc (build-essential), bwrap
 * (bubblewrap) and a Docker engine with the test image: beforeAll runs scripts/docker-env.sh
 * first (it starts Debian's dockerd when none answers and builds the image), so that the workers
 * detect docker. Without any of them the suite fails, it does not skip. The server must be built
 * first (`npm run build`): the harness runs bin/remex.js.
 */
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  actionSpawns,
  BazelWorkspace,
  onPath,
  remexLogErrors,
  removeTree,
  requireBazelTools,
  stopRemexChecked,
  tail,
  type BazelRun,
  type SpawnSummary,
} from '../helpers/bazel.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const DOCKER_ENV = fileURLToPath(new URL('../../scripts/docker-env.sh', import.meta.url));
const TEST_TIMEOUT_MS = 5 * 60_000;
const IMAGE = 'remex-test/busybox:1';
/** Spawns of `bazel build //...` and of `bazel test //...` after it (fixture README). */
const BUILD_SPAWNS = 10;
const TEST_SPAWNS = 4;
const PROBE = '//runners:probe';
const PROBE_OUTPUT = 'bazel-out/k8-fastbuild/bin/runners/probe.txt';
/**
 * The targets the busybox image can build, one action each: every target of //gen except
 * //gen:reversed (it runs //gen:tool's output, a `#!/bin/bash` script; building :tool itself
 * only writes that script).
 */
const BUSYBOX_TARGETS = [
  '//gen:hello',
  '//gen:multi',
  '//gen:big',
  '//gen:combined',
  '//gen:tree',
  '//gen:tree_listing',
  '//gen:summary',
  '//gen:tool',
];
/** What the image's root holds (scripts/docker-env.sh), plus /sbin, where docker mounts docker-init. */
const IMAGE_ROOT = ['bin', 'dev', 'etc', 'proc', 'root', 'sbin', 'sys', 'tmp', 'usr'];

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

/** The `runner` values each "worker started" line of the log advertises, one list per worker. */
function advertisedRunners(log: string): string[][] {
  return log
    .split('\n')
    .filter((l) => l.includes('"worker started"'))
    .map((l) => JSON.parse(l) as { properties?: { key: string; value: string }[] })
    .map((w) => (w.properties ?? []).filter((p) => p.key === 'runner').map((p) => p.value));
}

/** The probe's "key: value" lines. */
function parseProbe(text: string): Record<string, string> {
  return Object.fromEntries(
    text
      .split('\n')
      .map((l) => /^([a-z0-9]+): ?(.*)$/.exec(l))
      .filter((m): m is RegExpExecArray => m !== null)
      .map((m) => [m[1]!, m[2]!.trim()]),
  );
}

/** Runs scripts/docker-env.sh; throws with its output when it cannot provide the engine and image. */
async function dockerEnv(): Promise<string> {
  try {
    const { stdout, stderr } = await promisify(execFile)('bash', [DOCKER_ENV], { timeout: 300_000 });
    return `${stdout}${stderr}`.trim();
  } catch (err) {
    const { stdout = '', stderr = '' } = err as { stdout?: string; stderr?: string };
    throw new Error(
      `scripts/docker-env.sh could not provide a Docker engine and ${IMAGE} (the docker runner ` +
        `needs both; install Debian's docker.io and busybox-static):\n${stdout}${stderr}`,
      { cause: err },
    );
  }
}

async function waitFor<T>(what: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('Bazel 4.2.3 remote execution with runner=bubblewrap and runner=docker', () => {
  let bz: BazelWorkspace | undefined;
  /** Started like `npm start`: default config, embedded workers (CPU count). */
  let remex: RemexProcess | undefined;
  let remoteFlags: string[];
  let execRoot: string;
  let testLogs: string;
  /** Outputs of //... (non-manual targets), and of BUSYBOX_TARGETS. */
  let outputPaths: string[];
  let busyboxOutputPaths: string[];
  /** Output file (tree artifacts expanded) -> sha256 after the local build. */
  let localOutputs: Map<string, string>;
  /** test.log of each test after the local `bazel test`. */
  let localTestLogs: Map<string, string>;
  /** //runners:probe built remotely with runner=hosttools. */
  let hostProbe: Record<string, string> | undefined;
  /** What each step took, for the report at the end. */
  const timings: string[] = [];

  const context = (run?: BazelRun) => bz!.context(run);
  const snapshotTestLogs = () => bz!.snapshotTestLogs(testLogs, { xml: false }); // test.xml has timings
  const readProbe = async () => parseProbe(await readFile(join(execRoot, PROBE_OUTPUT), 'utf8'));

  /** Every non-internal spawn ran by remote execution: no local strategy, no cache hit. */
  function expectAllRemote(run: BazelRun, spawns: number): SpawnSummary {
    const summary = bz!.summary(run);
    expect(executedBy(summary), `${summary.line}\n${context(run)}`).toEqual({ remote: spawns });
    const runner = run.args
      .find((a) => a.includes('exec_properties=runner='))
      ?.split('=')
      .at(-1);
    timings.push(`runner=${runner}: bazel ${run.args[0]} -> ${summary.line} (${run.ms} ms)`);
    return summary;
  }

  function expectTestsPassed(run: BazelRun): void {
    expect(run.output, context(run)).toMatch(/^\/\/test:outputs_test\s+PASSED in/m);
    expect(run.output, context(run)).toMatch(/^\/\/test:smoke_test\s+PASSED in/m);
  }

  /** Runs a remote bazel command; returns it with the workers' "action finished" lines it caused. */
  async function remoteRun(want: number, ...args: string[]) {
    const before = finishedActions(remex!.log()).length;
    const run = await bz!.ok(want, ...args);
    return { run, ran: finishedActions(remex!.log()).slice(before) };
  }

  /** The local build's hashes of these outputs (tree artifacts expanded). */
  function localOutputsOf(paths: string[]): Record<string, string> {
    return Object.fromEntries(
      [...localOutputs].filter(([file]) => paths.some((p) => file === p || file.startsWith(`${p}/`))),
    );
  }

  beforeAll(async () => {
    const started = Date.now();
    requireBazelTools();
    if (!onPath('bwrap'))
      throw new Error('runner=bubblewrap needs bwrap on PATH: install the Debian package bubblewrap');
    // Before remex starts: its workers detect docker only when an engine answers.
    const env = await dockerEnv();
    timings.push(`scripts/docker-env.sh: ${env.split('\n').at(-1)} (${Date.now() - started} ms)`);

    bz = await BazelWorkspace.create('remex-bazel-runners-');
    bz.extraContext = () =>
      remex ? [`--- remex log on port ${remex.port} (tail):\n${tail(remex.log(), 40)}`] : [];
    remex = await startRemex();
    remoteFlags = [
      '--noshow_progress',
      `--remote_executor=grpc://${remex.address}`,
      '--noremote_accept_cached',
    ];

    ({ execRoot, testLogs } = await bz.paths('--noshow_progress'));
    outputPaths = await bz.outputPaths('--noshow_progress');
    // Without //gen:reversed nothing is built in the host (exec) configuration. (Bazel 4.2.3's
    // cquery still lists //gen:tool's host-configuration output here, because the server
    // analysed //gen:reversed for the query above: leave those out.)
    busyboxOutputPaths = (await bz.outputPathsOf(BUSYBOX_TARGETS.join(' + '), '--noshow_progress')).filter(
      (p) => !p.startsWith('bazel-out/host/'),
    );
    expect(busyboxOutputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/tree');
    expect(busyboxOutputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/multi_empty.txt');
    expect(busyboxOutputPaths, context()).not.toContain('bazel-out/k8-fastbuild/bin/gen/reversed.txt');
    expect(outputPaths, context()).not.toContain(PROBE_OUTPUT);
    timings.push(
      `beforeAll (docker-env, remex, bazel server start, info, 2 cquery): ${Date.now() - started} ms`,
    );
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    if (bz && bz.history.length > 0) console.info(`bazel commands run:\n  ${bz.history.join('\n  ')}`);
    if (timings.length > 0) console.info(`bazel-runners timings:\n  ${timings.join('\n  ')}`);
    const problems: string[] = [];
    if (bz) problems.push(...(await bz.shutdown()));
    const stopped = await stopRemexChecked(remex);
    if (stopped) problems.push(stopped);
    await bz?.remove();
    await removeTree(remex?.dataDir);
    if (problems.length > 0) throw new Error(problems.join('\n'));
  }, TEST_TIMEOUT_MS);

  it('the local workers offer the bubblewrap and docker runners (their "worker started" log line)', async () => {
    const workers = await waitFor('the "worker started" log line', 10_000, () => {
      const found = advertisedRunners(remex!.log());
      return found.length > 0 ? found : undefined;
    }).catch((err: Error) => {
      throw new Error(`${err.message}\n${context()}`);
    });
    // A runner the host cannot run is left out with a "runner not offered" line saying why.
    const notOffered = remex!
      .log()
      .split('\n')
      .filter((l) => l.includes('"runner not offered"'));
    for (const runners of workers) {
      expect(runners, `runners not offered:\n${notOffered.join('\n')}`).toEqual(
        expect.arrayContaining(['hosttools', 'bubblewrap', 'docker']),
      );
    }
  });

  it(
    'local reference: build and test //... without remote flags',
    async () => {
      const build = await bz!.ok(0, 'build', '//...', '--noshow_progress');
      const summary = bz!.summary(build);
      expect(actionSpawns(summary), context(build)).toBe(BUILD_SPAWNS);
      expect(Object.keys(summary.runners).filter((r) => r.startsWith('remote'))).toEqual([]);
      localOutputs = await bz!.snapshotOutputs(execRoot, outputPaths);
      expect(
        [...localOutputs.keys()].filter((k) => k.startsWith('bazel-out/k8-fastbuild/bin/gen/tree/')),
        'the tree artifact has 10 files',
      ).toHaveLength(10);

      const test = await bz!.ok(0, 'test', '//...', '--noshow_progress');
      expectTestsPassed(test);
      localTestLogs = await snapshotTestLogs();
      expect([...localTestLogs.keys()]).toEqual(['test/outputs_test/test.log', 'test/smoke_test/test.log']);
      timings.push(`local build //... ${build.ms} ms, test //... ${test.ms} ms`);
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'contrast: the probe built remotely with runner=hosttools sees the host',
    async () => {
      await bz!.ok(0, 'clean');
      const { run, ran } = await remoteRun(
        0,
        'build',
        PROBE,
        ...remoteFlags,
        '--remote_default_exec_properties=runner=hosttools',
      );
      expectAllRemote(run, 1);
      expect(
        ran.map((a) => a.exitCode),
        context(run),
      ).toEqual([0]);
      hostProbe = await readProbe();
      console.info(`probe with runner=hosttools: ${JSON.stringify(hostProbe)}`);
      // The fixture's actions need the host's bash; PID 1 is the host's own, whatever it is.
      expect(hostProbe.bash, JSON.stringify(hostProbe)).toBe('yes');
      expect(['bwrap', 'docker-init'], JSON.stringify(hostProbe)).not.toContain(hostProbe.pid1);
      expect(hostProbe.root, JSON.stringify(hostProbe)).toBeTruthy();
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'runner=bubblewrap: build //... and test //... run every action remotely in the sandbox; outputs and test logs match the local build',
    async () => {
      expect(localOutputs, 'needs the local build').toBeDefined();
      await bz!.ok(0, 'clean');
      const flags = [...remoteFlags, '--remote_default_exec_properties=runner=bubblewrap'];

      // The probe is built in the same invocation, on the same platform, as the outputs.
      const { run: build, ran } = await remoteRun(0, 'build', '//...', PROBE, ...flags);
      expectAllRemote(build, BUILD_SPAWNS + 1);
      // Server side: the embedded workers ran exactly these actions, all successfully.
      expect(
        ran.map((a) => a.exitCode),
        context(build),
      ).toEqual(Array<number>(BUILD_SPAWNS + 1).fill(0));
      expect(Object.fromEntries(await bz!.snapshotOutputs(execRoot, outputPaths))).toEqual(
        Object.fromEntries(localOutputs),
      );

      const probe = await readProbe();
      console.info(`probe with runner=bubblewrap: ${JSON.stringify(probe)}`);
      const why = `bubblewrap probe ${JSON.stringify(probe)}; hosttools probe ${JSON.stringify(hostProbe)}`;
      // bwrap is PID 1 of the sandbox's PID namespace; the host's root is visible but
      // read-only; the network namespace has only loopback.
      expect(probe.pid1, why).toBe('bwrap');
      expect(probe.usr, why).toBe('read-only');
      expect(probe.net, why).toBe('lo');
      expect(probe.bash, why).toBe('yes');
      if (hostProbe) expect(probe.root, why).toBe(hostProbe.root);

      const { run: test, ran: testRan } = await remoteRun(0, 'test', '//...', ...flags);
      expectAllRemote(test, TEST_SPAWNS);
      expectTestsPassed(test);
      expect(test.output, 'executed, not cached').not.toMatch(/\(cached\) PASSED/);
      expect(
        testRan.map((a) => a.exitCode),
        context(test),
      ).toEqual(Array<number>(TEST_SPAWNS).fill(0));
      expect(Object.fromEntries(await snapshotTestLogs())).toEqual(Object.fromEntries(localTestLogs));
    },
    TEST_TIMEOUT_MS,
  );

  it(
    `runner=docker with container-image=docker://${IMAGE}: the busybox-compatible targets build remotely in a container; outputs match the local build`,
    async () => {
      expect(localOutputs, 'needs the local build').toBeDefined();
      await bz!.ok(0, 'clean');
      const flags = [
        ...remoteFlags,
        '--remote_default_exec_properties=runner=docker',
        `--remote_default_exec_properties=container-image=docker://${IMAGE}`,
      ];

      // The image has no bash: with Bazel's default genrule shell the action fails in the
      // container, with the message of the image's init (the docker runner runs one).
      const { run: noBash, ran: noBashRan } = await remoteRun(1, 'build', '//gen:hello', ...flags);
      expect(noBash.output, context(noBash)).toMatch(/Executing genrule \/\/gen:hello failed: \(Exit 127\)/);
      expect(noBash.output, context(noBash)).toMatch(/exec \/bin\/bash failed: No such file or directory/);
      expect(
        noBashRan.map((a) => a.exitCode),
        context(noBash),
      ).toEqual([127]);

      // With /bin/sh as the genrule shell: busybox's ash and applets.
      const shFlags = [...flags, '--shell_executable=/bin/sh'];
      const { run: build, ran } = await remoteRun(0, 'build', ...BUSYBOX_TARGETS, PROBE, ...shFlags);
      expectAllRemote(build, BUSYBOX_TARGETS.length + 1);
      expect(
        ran.map((a) => a.exitCode),
        context(build),
      ).toEqual(Array<number>(BUSYBOX_TARGETS.length + 1).fill(0));
      const expected = localOutputsOf(busyboxOutputPaths);
      expect(
        Object.keys(expected).filter((k) => k.startsWith('bazel-out/k8-fastbuild/bin/gen/tree/')),
        'the tree artifact is among them',
      ).toHaveLength(10);
      expect(Object.keys(expected)).toContain('bazel-out/k8-fastbuild/bin/gen/big.bin');
      expect(Object.fromEntries(await bz!.snapshotOutputs(execRoot, busyboxOutputPaths))).toEqual(expected);

      const probe = await readProbe();
      console.info(`probe with runner=docker: ${JSON.stringify(probe)}`);
      const why = `docker probe ${JSON.stringify(probe)}; hosttools probe ${JSON.stringify(hostProbe)}`;
      // docker-init is PID 1, /bin/sh is busybox, there is no bash and no os-release, only
      // loopback, and the root is the image's: its directories, plus /sbin (docker-init) and
      // the mount point of the input root, which docker creates (first component of its path).
      expect(probe.pid1, why).toBe('docker-init');
      expect(probe.sh, why).toBe('busybox');
      expect(probe.bash, why).toBe('no');
      expect(probe.os, why).toBe('none');
      expect(probe.net, why).toBe('lo');
      const inputRootTop = remex!.dataDir.split('/').filter(Boolean)[0]!;
      const allowed = new Set([...IMAGE_ROOT, inputRootTop]);
      const root = (probe.root ?? '').split(' ').filter(Boolean);
      expect(root, why).toEqual(expect.arrayContaining(['bin', 'etc', 'usr']));
      expect(
        root.filter((d) => !allowed.has(d)),
        why,
      ).toEqual([]);
    },
    TEST_TIMEOUT_MS,
  );

  it('remex logged no errors and no Node.js warnings', () => {
    expect(remexLogErrors(remex?.log() ?? ''), context()).toEqual([]);
  });
});
