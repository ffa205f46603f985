import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActionCacheService,
  ContentAddressableStorageService,
  GetActionResultRequest,
  Tree,
  UpdateActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { PushDirectoryRequest, PushService } from '../../src/gen/build/bazel/remote/asset/v1/remote_asset.js';
import { digestOf, errorOf } from '../helpers/blobs.js';
import { clientsFor, unaryCall, type Clients } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

// Blobs that are not what a stored message says they are (a "Tree" that does not parse,
// a Tree naming malformed digests) make a cache entry unusable: NOT_FOUND, never UNKNOWN
// or an error about a field the request does not have.

let remex: RemexProcess;
let c: Clients;
const garbage = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02, 0x03, 0x24]);

beforeAll(async () => {
  remex = await startRemex();
  c = clientsFor(remex.address);
  await unaryCall(c.cas, ContentAddressableStorageService.batchUpdateBlobs, {
    instanceName: '',
    digestFunction: 0,
    requests: [{ digest: digestOf(garbage), data: garbage, compressor: 0 }],
  });
});

afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
});

async function storeAndGet(treeDigest: { hash: string; sizeBytes: number }, action: string) {
  const actionDigest = digestOf(action);
  await unaryCall(
    c.actionCache,
    ActionCacheService.updateActionResult,
    UpdateActionResultRequest.fromPartial({
      actionDigest,
      actionResult: { outputDirectories: [{ path: 'o', treeDigest }] },
    }),
  );
  return errorOf(
    unaryCall(
      c.actionCache,
      ActionCacheService.getActionResult,
      GetActionResultRequest.fromPartial({ actionDigest }),
    ),
  );
}

describe('stored data that does not parse', () => {
  it('an unparseable Tree makes the action result NOT_FOUND', async () => {
    const err = await storeAndGet(digestOf(garbage), 'action with garbage tree');
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(/no longer in the CAS/);
  });

  it('a Tree naming a malformed file digest makes the action result NOT_FOUND', async () => {
    const tree = Buffer.from(
      Tree.encode(
        Tree.fromPartial({ root: { files: [{ name: 'f', digest: { hash: 'zz', sizeBytes: 2 } }] } }),
      ).finish(),
    );
    await unaryCall(c.cas, ContentAddressableStorageService.batchUpdateBlobs, {
      instanceName: '',
      digestFunction: 0,
      requests: [{ digest: digestOf(tree), data: tree, compressor: 0 }],
    });
    const err = await storeAndGet(digestOf(tree), 'action with malformed digest in tree');
    expect(err.code).toBe(status.NOT_FOUND);
  });

  it('PushDirectory of a blob that is not a Directory is INVALID_ARGUMENT', async () => {
    const err = await errorOf(
      unaryCall(
        c.push,
        PushService.pushDirectory,
        PushDirectoryRequest.fromPartial({ uris: ['u'], rootDirectoryDigest: digestOf(garbage) }),
      ),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/not a Directory/);
  });
});
