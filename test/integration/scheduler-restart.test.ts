/**
 * A restart of the PostgreSQL-backed scheduler loses nothing (issue 5's acceptance):
 * with one action running on a worker and more queued, `remex serve` is stopped and
 * started again on the same address and database; the worker keeps its lease, every
 * operation completes, and WaitExecution on the new process answers for each of them.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OperationsService } from '../../src/gen/google/longrunning/operations.js';
import { HealthCheckResponse_ServingStatus, HealthService } from '../../src/gen/grpc/health/v1/health.js';
import type { ConfigInput } from '../../src/config/config.js';
import { removeTree, tail } from '../helpers/bazel.js';
import { errorOf, readBlob } from '../helpers/blobs.js';
import { clientsFor, executionClientsFor, unaryCall } from '../helpers/clients.js';
import { collect, executeRequest, uploadAction, type OperationUpdate } from '../helpers/execution.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';
import { freePort, startPostgres, type Postgres } from '../helpers/services.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));
const ACTIONS = 4;

describe('PostgreSQL scheduler restart with actions queued and running', () => {
  let pg: Postgres | undefined;
  let remex: RemexProcess | undefined;
  let worker: ChildProcess | undefined;
  let workerLog = '';
  let dataDir: string | undefined;
  let address = '';

  const logs = () =>
    `--- remex log (tail):\n${tail(remex?.log() ?? '', 30)}\n--- worker log (tail):\n${tail(workerLog, 30)}`;

  beforeAll(async () => {
    pg = await startPostgres();
    dataDir = await mkdtemp(join(tmpdir(), 'remex-restart-'));
    address = `127.0.0.1:${await freePort()}`;
  });

  afterAll(async () => {
    worker?.kill('SIGTERM');
    await remex?.stop();
    await pg?.stop();
    await removeTree(dataDir);
  });

  const config: () => ConfigInput = () => ({
    cas: { type: 'disk', path: 'cas', maxSize: '1GiB' },
    actionCache: { type: 'disk', path: 'ac', maxSize: '64MiB' },
    execution: { scheduler: { type: 'postgres', url: pg!.url } },
    workers: { count: 0 },
  });
  const start = () => startRemex({ config: config(), dataDir, args: ['--listen', address] });

  it('every operation completes and WaitExecution answers on the new process', async () => {
    remex = await start();
    worker = spawn(
      process.execPath,
      [BIN, 'worker', '--server', address, '--capacity', '1', '--work-dir', join(dataDir!, 'w')],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, REMEX_LOG_LEVEL: 'info' } },
    );
    worker.stdout!.on('data', (c: Buffer) => (workerLog += c.toString()));
    worker.stderr!.on('data', (c: Buffer) => (workerLog += c.toString()));

    const c = clientsFor(address);
    const x = executionClientsFor(address);
    const names: string[] = [];
    const digests = [];
    for (let i = 0; i < ACTIONS; i++) {
      const { actionDigest } = await uploadAction(c, ['sh', '-c', `sleep 2; echo restart-${i} > out.txt`], {
        command: { outputPaths: ['out.txt'] },
      });
      digests.push(actionDigest);
      const stream = x.execution.execute(executeRequest({ actionDigest }));
      const first = await new Promise<OperationUpdate>((resolve, reject) => {
        const { done } = collect(stream, (u) => resolve(u));
        done.catch(reject);
      });
      names.push(first.name);
      stream.cancel();
    }
    // One runs (capacity 1), the rest wait in the queue.
    for (const deadline = Date.now() + 30_000; !workerLog.includes('lease started');) {
      if (Date.now() > deadline) throw new Error(`no lease started\n${logs()}`);
      await new Promise((r) => setTimeout(r, 25));
    }

    expect(workerLog.split('lease started').length - 1, 'one action running at the restart').toBe(1);
    expect(await remex.stop(), logs()).toBe(0);
    remex = await start();

    const results = await Promise.all(
      names.map(async (name) => {
        const updates = await collect(x.execution.waitExecution({ name })).done;
        return updates.at(-1)!;
      }),
    );
    for (const [i, last] of results.entries()) {
      expect(last.done, logs()).toBe(true);
      expect(last.response?.status?.code ?? 0, logs()).toBe(0);
      expect(last.response?.result?.exitCode, logs()).toBe(0);
      const out = last.response!.result!.outputFiles.find((f) => f.path === 'out.txt')!;
      const d = out.digest!;
      expect((await readBlob(c, `blobs/${d.hash}/${d.sizeBytes}`)).toString()).toBe(`restart-${i}\n`);
    }
    // The new process answers for the old names again, after completion too.
    const again = await collect(x.execution.waitExecution({ name: names[0]! })).done;
    expect(again.at(-1)?.done).toBe(true);
  });

  it('while the database is down the execution services report NOT_SERVING and calls fail UNAVAILABLE', async () => {
    expect(remex, 'needs the restarted server').toBeDefined();
    const c = clientsFor(address);
    const x = executionClientsFor(address);
    const check = () =>
      unaryCall(c.capabilities as Client, HealthService.check, {
        service: 'build.bazel.remote.execution.v2.Execution',
      });
    try {
      expect((await check()).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
      await pg!.stop();
      pg = undefined;
      for (const deadline = Date.now() + 20_000; ;) {
        if ((await check()).status === HealthCheckResponse_ServingStatus.NOT_SERVING) break;
        if (Date.now() > deadline) throw new Error(`still SERVING\n${logs()}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const err = await errorOf(
        unaryCall(x.operations as Client, OperationsService.getOperation, { name: 'operations/anything' }),
      );
      expect(err.code, err.details).toBe(status.UNAVAILABLE);
      expect(err.details).toMatch(/scheduler database/);
    } finally {
      c.close();
      x.close();
    }
  });
});
