import { execFile } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';

// Keeps `npm run bench` working: runs it in tiny mode as a child process (as the npm
// script does, through tsx) and checks that every figure came out as a finite positive
// number and the JSON file was written. Not timed; no thresholds on the figures.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

const LIMITS = ['sha256MBps', 'tcpMBps', 'diskFsyncMBps'];
const FIGURES = [
  'casWriteMBps',
  'casReadMBps',
  'serverPeakRssMB',
  'batchUpdateBlobsPerS',
  'batchUpdateMBps',
  'batchReadBlobsPerS',
  'batchReadMBps',
  'findMissingRequestsPerS',
  'findMissingP50Ms',
  'findMissingP99Ms',
  'actionCacheRequestsPerS',
  'actionCacheP50Ms',
  'actionCacheP99Ms',
  'execute1ActionsPerS',
  'execute1P50Ms',
  'execute1P99Ms',
  'executeNActionsPerS',
  'executeNP50Ms',
  'executeNP99Ms',
  'cacheHitP50Ms',
  'cacheHitP99Ms',
];
const RATIOS = ['casWriteRatio', 'casReadRatio', 'batchUpdateRatio', 'batchReadRatio'];

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

function expectPositive(value: unknown, what: string) {
  expect(typeof value, what).toBe('number');
  expect(Number.isFinite(value), `${what} is finite`).toBe(true);
  expect(value as number, what).toBeGreaterThan(0);
}

it('runs the bench in tiny mode: every figure is a finite positive number, printed and written as JSON', async () => {
  const results = await mkdtemp(join(tmpdir(), 'remex-bench-results-'));
  const data = await mkdtemp(join(tmpdir(), 'remex-bench-data-'));
  dirs.push(results, data);

  const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>(
    (resolve) =>
      execFile(
        process.execPath,
        ['--import', 'tsx', 'bench/run.ts', '--tiny', '--results-dir', results, '--data-dir', data],
        { cwd: ROOT, maxBuffer: 16 << 20 },
        (err, stdout, stderr) =>
          resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      ),
  );
  expect(code, stderr).toBe(0);

  const files = (await readdir(results)).filter((f) => f.endsWith('.json'));
  expect(files).toHaveLength(1);
  expect(files[0]).toMatch(/-tiny\.json$/);
  const report = JSON.parse(await readFile(join(results, files[0]!), 'utf8'));

  expect(report.mode).toBe('tiny');
  expectPositive(report.wallSeconds, 'wallSeconds');
  for (const id of LIMITS) {
    expectPositive(report.limits[id], `limits.${id}`);
    expect(report.limitSamples[id].length, `limitSamples.${id}`).toBeGreaterThan(0);
    for (const v of report.limitSamples[id]) expectPositive(v, `limitSamples.${id}`);
  }
  expect(Object.keys(report.results)).toContain('embedded');
  for (const [name, result] of Object.entries(report.results) as [
    string,
    { figures: Record<string, unknown>; ratios: Record<string, { value: unknown; limit: unknown }> },
  ][]) {
    expect(Object.keys(result.figures).sort(), name).toEqual([...FIGURES].sort());
    for (const id of FIGURES) expectPositive(result.figures[id], `${name}.${id}`);
    expect(Object.keys(result.ratios).sort(), name).toEqual([...RATIOS].sort());
    for (const id of RATIOS) {
      expectPositive(result.ratios[id]!.value, `${name}.${id}`);
      expect(['sha256', 'tcp', 'disk']).toContain(result.ratios[id]!.limit);
    }
  }

  // The printed table carries every figure's label and the results file's path.
  for (const f of report.figures as { label: string }[]) expect(stdout).toContain(f.label);
  expect(stdout).toContain('embedded');
  expect(stdout).toContain(join(results, files[0]!));
  // The data directory is cleaned up after the run.
  expect(await readdir(data)).toEqual([]);
}, 300_000);
