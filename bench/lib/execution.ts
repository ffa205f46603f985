import {
  Action,
  Command,
  type ExecutionClient,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { BenchClients } from './clients.js';
import { collect, executeRequest, type OperationUpdate } from '../../test/helpers/execution.js';
import { digestOf, maxBatchBytes, uploadBlobs } from './cas.js';
import { now } from './stats.js';

/**
 * Uploads one `/bin/true <tag>-<i>` action per index (setup, not measured): the argument
 * makes every Command, and so every action digest, distinct, so none is a cache hit.
 */
export async function uploadNoopActions(c: BenchClients, tag: string, count: number): Promise<Digest[]> {
  const empty = Buffer.alloc(0);
  const blobs: Buffer[] = [];
  const actions: Digest[] = [];
  for (let i = 0; i < count; i++) {
    const command = Buffer.from(
      Command.encode(Command.fromPartial({ arguments: ['/bin/true', `${tag}-${i}`] })).finish(),
    );
    const action = Buffer.from(
      Action.encode(
        Action.fromPartial({ commandDigest: digestOf(command), inputRootDigest: digestOf(empty) }),
      ).finish(),
    );
    blobs.push(command, action);
    actions.push(digestOf(action));
  }
  await uploadBlobs(c, blobs, await maxBatchBytes(c));
  return actions;
}

/**
 * Executes one action and returns the milliseconds from the Execute call to the
 * COMPLETED (done) operation, failing unless the action ran and exited 0.
 */
export async function executeTimed(
  client: ExecutionClient,
  actionDigest: Digest,
  expectCached: boolean,
): Promise<number> {
  const start = now();
  let doneAt = 0;
  let final: OperationUpdate | undefined;
  const { done } = collect(client.execute(executeRequest({ instanceName: '', actionDigest })), (u) => {
    if (u.done && !final) {
      doneAt = now();
      final = u;
    }
  });
  await done;
  const r = final?.response;
  if (!final || !r) throw new Error(`Execute of ${actionDigest.hash} ended without a COMPLETED operation`);
  if ((r.status?.code ?? 0) !== 0)
    throw new Error(`Execute of ${actionDigest.hash} failed: ${r.status?.message}`);
  if (r.result?.exitCode !== 0)
    throw new Error(`Execute of ${actionDigest.hash} exited ${r.result?.exitCode}`);
  if (r.cachedResult !== expectCached) {
    throw new Error(
      `Execute of ${actionDigest.hash}: cached_result ${r.cachedResult}, expected ${expectCached}`,
    );
  }
  return doneAt - start;
}
