import { createHash } from 'node:crypto';
import type { Client } from '@grpc/grpc-js';
import {
  BatchReadBlobsRequest,
  BatchUpdateBlobsRequest,
  CapabilitiesService,
  ContentAddressableStorageService,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { unaryCall } from '../../test/helpers/clients.js';
import type { BenchClients } from './clients.js';

export const digestOf = (data: Buffer): Digest => ({
  hash: createHash('sha256').update(data).digest('hex'),
  sizeBytes: data.length,
});

/** max_batch_total_size_bytes as the server advertises it, as a client learns it. */
export async function maxBatchBytes(c: BenchClients): Promise<number> {
  const caps = await unaryCall(c.capabilities as Client, CapabilitiesService.getCapabilities, {
    instanceName: '',
  });
  const max = caps.cacheCapabilities?.maxBatchTotalSizeBytes ?? 0;
  if (!(max > 0)) throw new Error('the server advertises no max_batch_total_size_bytes');
  return max;
}

/** Splits items into consecutive groups whose sizes add up to at most `max`. */
export function packBySize<T>(items: readonly T[], sizeOf: (item: T) => number, max: number): T[][] {
  const groups: T[][] = [];
  let current: T[] = [];
  let total = 0;
  for (const item of items) {
    const size = sizeOf(item);
    if (current.length > 0 && total + size > max) {
      groups.push(current);
      current = [];
      total = 0;
    }
    current.push(item);
    total += size;
  }
  if (current.length > 0) groups.push(current);
  return groups;
}

/** A unary method whose request is already encoded (so the clock measures the call, not our encoder). */
export function preEncoded<Res>(
  method: { path: string; responseDeserialize: (b: Buffer) => Res },
  body: Buffer,
) {
  return { path: method.path, requestSerialize: () => body, responseDeserialize: method.responseDeserialize };
}

export function encodeBatchUpdate(blobs: readonly Buffer[], digests: readonly Digest[]): Buffer {
  return Buffer.from(
    BatchUpdateBlobsRequest.encode({
      instanceName: '',
      digestFunction: 0,
      requests: blobs.map((data, i) => ({ digest: digests[i], data, compressor: 0 })),
    }).finish(),
  );
}

export function encodeBatchRead(digests: readonly Digest[]): Buffer {
  return Buffer.from(
    BatchReadBlobsRequest.encode({
      instanceName: '',
      digests: [...digests],
      acceptableCompressors: [],
      digestFunction: 0,
    }).finish(),
  );
}

/** Uploads blobs with BatchUpdateBlobs (setup, not measured), failing on any blob's error. */
export async function uploadBlobs(c: BenchClients, blobs: readonly Buffer[], max: number): Promise<Digest[]> {
  const digests = blobs.map(digestOf);
  const indexes = packBySize(
    blobs.map((_, i) => i),
    (i) => blobs[i]!.length,
    max,
  );
  for (const group of indexes) {
    const res = await unaryCall(
      c.cas as Client,
      preEncoded(
        ContentAddressableStorageService.batchUpdateBlobs,
        encodeBatchUpdate(
          group.map((i) => blobs[i]!),
          group.map((i) => digests[i]!),
        ),
      ),
      undefined,
    );
    const failed = res.responses.find((r) => (r.status?.code ?? 0) !== 0);
    if (failed)
      throw new Error(`BatchUpdateBlobs failed for ${failed.digest?.hash}: ${failed.status?.message}`);
  }
  return digests;
}
