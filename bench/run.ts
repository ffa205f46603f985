// `npm run bench`: remex measured against this machine's limits. Every scenario starts its
// own server on loopback (per configuration, with a fresh data directory), the limits are
// measured in the same run, and the figures are printed as one table and written as JSON
// to bench/results/<timestamp>.json. `--tiny` runs the same scenarios scaled down.
//
// Options: --tiny, --results-dir DIR (default bench/results), --data-dir DIR (where the
// servers' data directories and the disk probe go; default the system temp directory).
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { loadavg, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { CONFIGURATIONS } from './configurations.js';
import { ROOT } from './lib/child.js';
import { now } from './lib/stats.js';
import { measureLimits } from './limits.js';
import { FULL, TINY } from './params.js';
import { buildReport, formatReport } from './report.js';
import type { Scenario } from './scenario.js';
import { actionCache } from './scenarios/action-cache.js';
import { cacheHit } from './scenarios/cache-hit.js';
import { casStreaming } from './scenarios/cas-streaming.js';
import { execution } from './scenarios/execution.js';
import { findMissing } from './scenarios/find-missing.js';
import { smallBlobs } from './scenarios/small-blobs.js';

const SCENARIOS: Scenario[] = [casStreaming, smallBlobs, findMissing, actionCache, execution, cacheHit];

const { values: opts } = parseArgs({
  options: {
    tiny: { type: 'boolean', default: false },
    'results-dir': { type: 'string', default: join(ROOT, 'bench', 'results') },
    'data-dir': { type: 'string', default: tmpdir() },
  },
});

const params = opts.tiny ? TINY : FULL;
const date = new Date();
const loadAtStart = loadavg()[0]!;
const start = now();
const log = (message: string) =>
  process.stderr.write(`[bench +${((now() - start) / 1000).toFixed(1)}s] ${message}\n`);

const dataRoot = await mkdtemp(join(resolve(opts['data-dir']), 'remex-bench-'));
try {
  log(`${params.mode} mode, data in ${dataRoot}`);
  const { limits, samples } = await measureLimits(dataRoot, params.limitBytes, log);
  const ctx = { params, limits, log };
  const values: Record<string, Record<string, number>> = {};
  for (const conf of CONFIGURATIONS) {
    values[conf.name] = {};
    for (const scenario of SCENARIOS) {
      const dataDir = join(dataRoot, `${conf.name}-${scenario.name.replace(/\W+/g, '-').toLowerCase()}`);
      const server = await conf.start(dataDir);
      let figures: Record<string, number>;
      try {
        log(`${conf.name}: ${scenario.name} against ${server.address}`);
        figures = await scenario.run(server, ctx);
      } catch (err) {
        log(
          `${conf.name}: ${scenario.name} failed; the server's last log lines:\n${server.log().slice(-4000)}`,
        );
        throw err;
      } finally {
        await server.stop();
        await rm(dataDir, { recursive: true, force: true });
      }
      if (server.child.exitCode !== 0) {
        throw new Error(
          `${conf.name}: the server exited with ${server.child.exitCode} after ${scenario.name}:\n${server.log().slice(-4000)}`,
        );
      }
      Object.assign(values[conf.name]!, figures);
      log(`${conf.name}: ${scenario.name} done`);
    }
  }
  const report = buildReport(
    params,
    date,
    loadAtStart,
    (now() - start) / 1000,
    { limits, samples },
    CONFIGURATIONS,
    values,
  );
  await mkdir(opts['results-dir'], { recursive: true });
  const file = join(
    opts['results-dir'],
    `${date.toISOString().replace(/[:.]/g, '-')}${opts.tiny ? '-tiny' : ''}.json`,
  );
  await writeFile(file, `${JSON.stringify(report, null, 2)}\n`);
  console.log(formatReport(report));
  console.log(`results: ${file}`);
} finally {
  await rm(dataRoot, { recursive: true, force: true });
}
