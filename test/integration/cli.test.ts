import { execFile } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import {
  ActionCacheService,
  CapabilitiesService,
  ContentAddressableStorageService,
  FindMissingBlobsRequest,
  GetActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ListOperationsRequest, OperationsService } from '../../src/gen/google/longrunning/operations.js';
import { errorOf } from '../helpers/blobs.js';
import { clientsFor, executionClientsFor, unaryCall } from '../helpers/clients.js';
import { startRemex } from '../helpers/remex-process.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));
const run = async (...args: string[]) => {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [BIN, ...args]);
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
};

describe('remex CLI', () => {
  it('prints usage', async () => {
    const r = await run('help');
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/remex serve|serve\s+run the server/);
  });

  it('rejects an unknown command with exit code 2', async () => {
    const r = await run('frobnicate');
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown command "frobnicate"/);
  });

  it('refuses to start with a bad config, naming the bad field', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'remex-cli-'));
    const file = join(dir, 'bad.yaml');
    await writeFile(file, 'cas:\n  type: disk\n  maxSize: lots\n');
    const r = await run('serve', '--config', file, '--listen', '127.0.0.1:0');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cas\.path/);
    expect(r.stderr).toMatch(/cas\.maxSize: "lots" is not a size/);
  });

  it('refuses a config file that does not exist', async () => {
    const r = await run('serve', '--config', '/nonexistent/remex.yaml');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/cannot read config file \/nonexistent\/remex.yaml/);
  });

  it('refuses an unknown option', async () => {
    const r = await run('serve', '--lisen', '1.2.3.4:5');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/lisen/);
  });

  it('refuses an unknown role in --services, naming the roles', async () => {
    const r = await run('serve', '--services', 'cas,scheduler', '--listen', '127.0.0.1:0');
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /--services cas,scheduler: unknown role scheduler; choose from execution, cas, actioncache/,
    );
  });

  it('serves only the roles --services names, plus Capabilities', async () => {
    const remex = await startRemex({ args: ['--services', 'actioncache'] });
    const c = clientsFor(remex.address);
    const x = executionClientsFor(remex.address);
    try {
      const caps = await unaryCall(c.capabilities, CapabilitiesService.getCapabilities, { instanceName: '' });
      expect(caps.cacheCapabilities?.digestFunctions.length).toBeGreaterThan(0);
      const miss = await errorOf(
        unaryCall(
          c.actionCache,
          ActionCacheService.getActionResult,
          GetActionResultRequest.fromPartial({
            actionDigest: { hash: 'a'.repeat(64), sizeBytes: 1 },
          }),
        ),
      );
      expect(miss.code).toBe(status.NOT_FOUND);
      const cas = await errorOf(
        unaryCall(
          c.cas,
          ContentAddressableStorageService.findMissingBlobs,
          FindMissingBlobsRequest.fromPartial({}),
        ),
      );
      expect(cas.code).toBe(status.UNIMPLEMENTED);
      const exec = await errorOf(
        unaryCall(x.operations, OperationsService.listOperations, ListOperationsRequest.fromPartial({})),
      );
      expect(exec.code).toBe(status.UNIMPLEMENTED);
      // No local workers: this process serves neither Bots nor the CAS.
      expect(remex.log()).not.toMatch(/local workers started/);
      expect(remex.log()).toMatch(/"roles":\["actioncache"\]/);
    } finally {
      c.close();
      x.close();
      expect(await remex.stop()).toBe(0);
    }
  });
});
