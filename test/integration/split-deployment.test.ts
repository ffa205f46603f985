/**
 * The split deployment (issue 5's acceptance), every part real and on loopback:
 * PostgreSQL 15 (scheduler + CAS index), Redis 7 (action cache, assets), s3rver (CAS
 * objects), two replicas of the execution role, two of the CAS role, one action-cache role,
 * nginx in front with nginx/remex.conf, and two `remex worker` processes that know only
 * nginx's address. Bazel 4.2.3 builds the fixture workspace through nginx; one
 * execution replica is SIGKILLed while actions run; the build still succeeds; after
 * `bazel clean` the same build is answered entirely from the action cache.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ConfigInput } from '../../src/config/config.js';
import {
  BazelWorkspace,
  remexLogErrors,
  removeTree,
  requireBazelTools,
  tail,
  type SpawnSummary,
} from '../helpers/bazel.js';
import { shippedConfig, upstreamsConf } from '../helpers/nginx.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';
import {
  startNginx,
  startPostgres,
  startRedis,
  startS3,
  type Nginx,
  type Postgres,
  type Redis,
  type S3,
} from '../helpers/services.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));
const TEST_TIMEOUT_MS = 8 * 60_000;
/** `bazel build //... //slow:all`: the fixture's 10 spawns plus 8 slow ones and their join. */
const SPAWNS = 19;

interface WorkerProcess {
  child: ChildProcess;
  log(): string;
}

function startWorker(name: string, server: string, workDir: string): WorkerProcess {
  const child = spawn(
    process.execPath,
    [BIN, 'worker', '--server', server, '--capacity', '2', '--work-dir', workDir, '--name', name],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, REMEX_LOG_LEVEL: 'info' } },
  );
  let output = '';
  child.stdout!.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr!.on('data', (c: Buffer) => (output += c.toString()));
  return { child, log: () => output };
}

function count(text: string, needle: string): number {
  return text.split('\n').filter((l) => l.includes(needle)).length;
}

/** Established TCP connections to 127.0.0.1:port, from /proc/net/tcp (state 01). */
async function connectionsTo(port: number): Promise<number> {
  const table = await readFile('/proc/net/tcp', 'utf8');
  const local = `0100007F:${port.toString(16).toUpperCase().padStart(4, '0')}`;
  return table
    .split('\n')
    .slice(1)
    .map((l) => l.trim().split(/\s+/))
    .filter((f) => f[1] === local && f[3] === '01').length;
}

async function waitFor(what: string, timeoutMs: number, probe: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe('split deployment: 2 execution replicas, 2 CAS replicas, AC role, 2 workers behind nginx', () => {
  let pg: Postgres | undefined;
  let redis: Redis | undefined;
  let s3: S3 | undefined;
  let nginx: Nginx | undefined;
  const replicas: RemexProcess[] = [];
  /** Two CAS replicas on the same bucket and index: the CAS scales out too. */
  const casRoles: RemexProcess[] = [];
  let acRole: RemexProcess | undefined;
  const workers: WorkerProcess[] = [];
  let bz: BazelWorkspace | undefined;
  let tmp: string | undefined;

  const roleLogs = () => [
    ...replicas.map((r, i) => `--- execution replica ${i} log (tail):\n${tail(r.log(), 25)}`),
    ...casRoles.map((r, i) => `--- cas replica ${i} log (tail):\n${tail(r.log(), 15)}`),
    `--- ac role log (tail):\n${tail(acRole?.log() ?? '', 15)}`,
    ...workers.map((w, i) => `--- worker ${i} log (tail):\n${tail(w.log(), 15)}`),
  ];

  beforeAll(async () => {
    requireBazelTools();
    tmp = await mkdtemp(join(tmpdir(), 'remex-split-'));
    [pg, redis, s3] = await Promise.all([startPostgres(), startRedis(), startS3()]);
    const shared: ConfigInput = {
      cas: {
        // A local disk tier in front of the shared, indexed S3 store.
        type: 'tiered',
        fast: { type: 'disk', path: 'cas-fast', maxSize: '1GiB' },
        slow: {
          type: 'indexed',
          index: { type: 'postgres', url: pg.url },
          backend: {
            type: 's3',
            bucket: s3.bucket,
            endpoint: s3.endpoint,
            forcePathStyle: true,
            accessKeyId: s3.accessKeyId,
            secretAccessKey: s3.secretAccessKey,
          },
        },
      },
      actionCache: { type: 'redis', url: redis.url, keyPrefix: 'ac:' },
      assets: { type: 'redis', url: redis.url, keyPrefix: 'assets:' },
      execution: { scheduler: { type: 'postgres', url: pg.url }, botSessionTimeout: '10s' },
      workers: { count: 0 },
    };
    const role = (services: string) => startRemex({ config: shared, args: ['--services', services] });
    // The replicas migrate the same database at the same time: the advisory lock serialises them.
    const [r0, r1, cas0, cas1, ac] = await Promise.all([
      role('execution'),
      role('execution'),
      role('cas'),
      role('cas'),
      role('actioncache'),
    ]);
    replicas.push(r0, r1);
    casRoles.push(cas0, cas1);
    acRole = ac;
    const upstreams = await upstreamsConf({
      execution: replicas.map((r) => r.address),
      cas: casRoles.map((r) => r.address),
      actioncache: ac.address,
    });
    nginx = await startNginx(await shippedConfig(), undefined, { 'upstreams.conf': upstreams });
    const front = `127.0.0.1:${nginx.port}`;
    workers.push(startWorker('w0', front, join(tmp, 'w0')), startWorker('w1', front, join(tmp, 'w1')));
    await waitFor('both workers to open their bot sessions', 30_000, () =>
      workers.every((w) => count(w.log(), 'bot session created') >= 2),
    );
    bz = await BazelWorkspace.create('remex-bazel-split-');
    bz.extraContext = roleLogs;
  }, TEST_TIMEOUT_MS);

  afterAll(async () => {
    if (bz && bz.history.length > 0) console.info(`bazel commands run:\n  ${bz.history.join('\n  ')}`);
    await bz?.shutdown();
    await bz?.remove();
    for (const w of workers) w.child.kill('SIGTERM');
    await Promise.all([...replicas, ...casRoles, acRole].map((r) => r?.stop()));
    await nginx?.stop();
    await Promise.all([pg?.stop(), redis?.stop(), s3?.stop()]);
    for (const r of [...replicas, ...casRoles, acRole]) await removeTree(r?.dataDir);
    await removeTree(tmp);
  }, TEST_TIMEOUT_MS);

  it(
    'Bazel builds through nginx while an execution replica is killed mid-build; a clean rebuild is all cache hits',
    async () => {
      const front = `127.0.0.1:${nginx!.port}`;
      const flags = ['--noshow_progress', `--remote_executor=grpc://${front}`, '--remote_retries=10'];
      const started = () => workers.reduce((n, w) => n + count(w.log(), 'lease started'), 0);
      const building = bz!.run('build', '//...', '//slow:all', ...flags);
      let finished = false;
      void building.then(() => (finished = true));
      // Slow actions run 3 s each on 4 slots: once 4 leases started, the build is mid-way.
      await waitFor('4 actions to start on the workers', 120_000, () => started() >= 4 || finished);
      expect(finished, 'the build must still be running when the replica is killed').toBe(false);
      // nginx really sends work to the replica about to die (Execute streams, bot polls).
      expect(await connectionsTo(replicas[0]!.port), 'connections from nginx to replica 0').toBeGreaterThan(
        0,
      );
      replicas[0]!.child.kill('SIGKILL');
      const killedAt = started();
      const build = await building;
      expect(build.code, bz!.context(build)).toBe(0);
      const summary: SpawnSummary = bz!.summary(build);
      expect(summary.runners.remote, `${summary.line}\n${bz!.context(build)}`).toBe(SPAWNS);
      // Work went on after the kill, through the surviving replica.
      expect(started(), bz!.context(build)).toBeGreaterThan(killedAt);
      // Both CAS replicas took part (nginx keeps its connections to each open).
      for (const [i, r] of casRoles.entries())
        expect(await connectionsTo(r.port), `connections from nginx to CAS replica ${i}`).toBeGreaterThan(0);
      const { execRoot } = await bz!.paths('--noshow_progress');
      const joined = await readFile(join(execRoot, 'bazel-out/k8-fastbuild/bin/slow/slow_all.txt'), 'utf8');
      expect(joined).toBe(Array.from({ length: 8 }, (_, i) => `slow action ${i}\n`).join(''));

      await bz!.ok(0, 'clean');
      const ranBefore = started();
      const again = await bz!.ok(0, 'build', '//...', '//slow:all', ...flags);
      const hits = bz!.summary(again);
      expect(hits.runners, `${hits.line}\n${bz!.context(again)}`).toEqual({
        'remote cache hit': SPAWNS,
        ...(hits.runners.internal !== undefined ? { internal: hits.runners.internal } : {}),
      });
      expect(started(), 'nothing ran on a worker').toBe(ranBefore);
    },
    TEST_TIMEOUT_MS,
  );

  it('the surviving roles logged no errors', () => {
    for (const r of [replicas[1], ...casRoles, acRole])
      expect(remexLogErrors(r?.log() ?? '').join('\n'), roleLogs().join('\n')).toBe('');
  });
});
