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
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  actionSpawns,
  BazelWorkspace,
  parseSummary,
  remexLogErrors,
  removeTree,
  requireBazelTools,
  sha256File,
  stopRemexChecked,
  tail,
  walkFiles,
  type BazelRun,
  type SpawnSummary,
} from '../helpers/bazel.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const BIG_SIZE = 20 * 1024 * 1024;
const BIG_SHA256 = '81ce5739fcd9a1b8b1a2107442bd36a345502dd325bf854068b1bcd3a951eb70';
const EMPTY_SHA256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const TEST_TIMEOUT_MS = 10 * 60_000;

describe('Bazel 4.2.3 with --remote_cache against remex serve', () => {
  let bz: BazelWorkspace | undefined;
  let remex: RemexProcess | undefined;
  let remoteFlags: string[];
  let execRoot: string;
  let testLogs: string;
  /** Execroot-relative paths of the outputs of all non-manual targets (files and tree artifacts). */
  let outputPaths: string[];
  /** Output file (tree artifacts expanded) -> sha256, after the cold local build. */
  let coldOutputs: Map<string, string>;
  let coldSummary: SpawnSummary;

  const context = (run?: BazelRun) => bz!.context(run);
  const bazelOk = (want: number, ...args: string[]) => bz!.ok(want, ...args);
  const snapshotOutputs = () => bz!.snapshotOutputs(execRoot, outputPaths);
  /** test.log and test.xml of every test: they are cached outputs too. */
  const snapshotTestLogs = () => bz!.snapshotTestLogs(testLogs);

  function expectAllFromCache(run: BazelRun, expectedHits: number): SpawnSummary {
    const summary = bz!.summary(run);
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
    requireBazelTools();
    bz = await BazelWorkspace.create('remex-bazel-it-');
    bz.extraContext = () => (remex ? [`--- remex log (tail):\n${tail(remex.log(), 40)}`] : []);

    remex = await startRemex();
    remoteFlags = ['--noshow_progress', `--remote_cache=grpc://${remex.address}`];

    ({ execRoot, testLogs } = await bz.paths(...remoteFlags));
    outputPaths = await bz.outputPaths(...remoteFlags);
    expect(outputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/big.bin');
    expect(outputPaths, context()).toContain('bazel-out/k8-fastbuild/bin/gen/tree');
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    if (bz && bz.history.length > 0) console.info(`bazel commands run:\n  ${bz.history.join('\n  ')}`);
    const problems: string[] = [];
    if (bz) problems.push(...(await bz.shutdown()));
    const stopped = await stopRemexChecked(remex);
    if (stopped) problems.push(stopped);
    await bz?.remove();
    await removeTree(remex?.dataDir);
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
    expect(remexLogErrors(remex!.log()), context()).toEqual([]);
  });
});
