import { credentials } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import {
  digestOf,
  digestString,
  emptyBlobHash,
  SHA256,
  type Digest,
  type DigestFunction,
} from '../common/digest.js';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError } from '../common/status.js';
import {
  CapabilitiesClient,
  ContentAddressableStorageClient,
  ContentAddressableStorageService,
  CapabilitiesService,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamClient } from '../gen/google/bytestream/bytestream.js';
import {
  byteStreamRead,
  byteStreamWrite,
  checkReceived,
  memorySink,
  readResourceName,
  writeResourceName,
  type BlobSource,
} from './bytestream-io.js';
import { Limiter, forEachLimit } from './concurrency.js';
import { MissingBlobsError } from './missing-blobs-error.js';
import { CHANNEL_OPTIONS, codeOf, unaryCall } from './grpc-call.js';

/** A blob to upload: its digest plus its bytes or the file holding them. */
export type UploadItem = { digest: Digest } & BlobSource;

/** A blob to download into a file. */
export interface DownloadItem {
  digest: Digest;
  path: string;
}

export interface CasClientOptions {
  /** REAPI instance name sent with every request. */
  instanceName: string;
  /** Digest function of every digest (default SHA256). */
  digestFunction?: DigestFunction;
  /** RPCs in flight at once, across all callers (default 16). */
  concurrency?: number;
  /** ByteStream chunk size (default 256 KiB). */
  chunkBytes?: number;
}

const FIND_MISSING_MAX = 10_000;
/** Framing counted per blob when packing batches, so that a batch message stays under the limit. */
const PER_BLOB_OVERHEAD = 256;
const DEFAULT_BATCH_LIMIT = 4 << 20;

/**
 * A client for a remex (or any REAPI) CAS at one address: FindMissingBlobs in requests of
 * at most 10,000 digests, uploads and downloads with small blobs packed into
 * BatchUpdateBlobs / BatchReadBlobs under the server's max_batch_total_size_bytes (from
 * GetCapabilities) and large ones streamed through ByteStream from and to files. Every RPC
 * goes through one Limiter, so callers can fan out freely. Downloads are hash-checked.
 */
export class CasClient {
  readonly digestFunction: DigestFunction;
  readonly instanceName: string;
  private readonly limiter: Limiter;
  private readonly chunkBytes: number;
  private batchLimitPromise: Promise<number> | undefined;

  constructor(
    private readonly clients: {
      cas: ContentAddressableStorageClient;
      byteStream: ByteStreamClient;
      capabilities: CapabilitiesClient;
    },
    options: CasClientOptions,
  ) {
    this.instanceName = options.instanceName;
    this.digestFunction = options.digestFunction ?? SHA256;
    this.limiter = new Limiter(options.concurrency ?? 16);
    this.chunkBytes = options.chunkBytes ?? 256 << 10;
  }

  /** A client with its own gRPC clients for `address` (host:port). */
  static connect(address: string, options: CasClientOptions): CasClient {
    const c = credentials.createInsecure();
    return new CasClient(
      {
        cas: new ContentAddressableStorageClient(address, c, CHANNEL_OPTIONS),
        byteStream: new ByteStreamClient(address, c, CHANNEL_OPTIONS),
        capabilities: new CapabilitiesClient(address, c, CHANNEL_OPTIONS),
      },
      options,
    );
  }

  close(): void {
    this.clients.cas.close();
    this.clients.byteStream.close();
    this.clients.capabilities.close();
  }

  private get fnValue(): number {
    return this.digestFunction.value;
  }

  /** Largest batch payload, from the server's capabilities (4 MiB when it gives none). */
  batchLimit(signal?: AbortSignal): Promise<number> {
    this.batchLimitPromise ??= unaryCall(
      this.clients.capabilities,
      CapabilitiesService.getCapabilities,
      { instanceName: this.instanceName },
      { signal, timeoutMs: 30_000, waitForReady: true },
    ).then(
      (caps) => caps.cacheCapabilities?.maxBatchTotalSizeBytes || DEFAULT_BATCH_LIMIT,
      (err: unknown) => {
        if (codeOf(err) === Code.UNIMPLEMENTED) return DEFAULT_BATCH_LIMIT;
        this.batchLimitPromise = undefined; // transient: ask again next time
        throw err;
      },
    );
    return this.batchLimitPromise;
  }

  private async isEmpty(d: Digest): Promise<boolean> {
    return d.sizeBytes === 0 && d.hash === (await emptyBlobHash(this.digestFunction));
  }

  /** Digests the CAS lacks (deduplicated; the empty blob is never missing). */
  async findMissing(digests: readonly Digest[], signal?: AbortSignal): Promise<Digest[]> {
    const unique = await this.uniqueNonEmpty(digests, (d) => d);
    const missing: Digest[] = [];
    const requests: Digest[][] = [];
    for (let i = 0; i < unique.length; i += FIND_MISSING_MAX)
      requests.push(unique.slice(i, i + FIND_MISSING_MAX));
    await Promise.all(
      requests.map((blobDigests) =>
        this.limiter.run(async () => {
          const res = await unaryCall(
            this.clients.cas,
            ContentAddressableStorageService.findMissingBlobs,
            { instanceName: this.instanceName, blobDigests, digestFunction: this.fnValue },
            { signal, waitForReady: true },
          );
          missing.push(...res.missingBlobDigests);
        }),
      ),
    );
    return missing;
  }

  /** Uploads only the items the CAS does not already hold. */
  async uploadMissing(items: readonly UploadItem[], signal?: AbortSignal): Promise<void> {
    const missing = new Set(
      (
        await this.findMissing(
          items.map((i) => i.digest),
          signal,
        )
      ).map(digestString),
    );
    await this.upload(
      items.filter((i) => missing.has(digestString(i.digest))),
      signal,
    );
  }

  /** Uploads every item (deduplicated by digest): batches for small blobs, ByteStream for large. */
  async upload(items: readonly UploadItem[], signal?: AbortSignal): Promise<void> {
    const unique = await this.uniqueNonEmpty(items, (i) => i.digest);
    const limit = await this.batchLimit(signal);
    const { small, large } = split(unique, limit);
    await Promise.all([
      ...packBatches(small, limit).map((batch) => this.limiter.run(() => this.batchUpdate(batch, signal))),
      ...large.map((item) =>
        this.limiter.run(() =>
          byteStreamWrite(
            this.clients.byteStream,
            writeResourceName(this.instanceName, this.digestFunction, item.digest, randomUUID()),
            item.digest,
            item,
            this.chunkBytes,
            signal,
          ),
        ),
      ),
    ]);
  }

  private async batchUpdate(batch: UploadItem[], signal?: AbortSignal): Promise<void> {
    const requests = await Promise.all(
      batch.map(async (item) => ({
        digest: item.digest,
        data:
          'data' in item
            ? item.data
            : await readFile(item.path).catch((err: unknown) => {
                throw toRemexError(err, `reading ${item.path} to upload`);
              }),
        compressor: 0,
      })),
    );
    const res = await unaryCall(
      this.clients.cas,
      ContentAddressableStorageService.batchUpdateBlobs,
      { instanceName: this.instanceName, requests, digestFunction: this.fnValue },
      { signal, waitForReady: true },
    );
    for (const r of res.responses) {
      if (r.status && r.status.code !== Code.OK) {
        throw new RemexError(
          r.status.code as Code,
          `BatchUpdateBlobs: blob ${r.digest ? digestString(r.digest) : '?'}: ${r.status.message}`,
        );
      }
    }
  }

  /**
   * Downloads blobs into the given files (created or truncated), in parallel. Returns the
   * digests the CAS does not have; their files are not left behind.
   */
  async downloadToFiles(items: readonly DownloadItem[], signal?: AbortSignal): Promise<Digest[]> {
    const unique = await this.uniqueNonEmpty(items, (i) => i.digest);
    await Promise.all(
      items.filter((i) => i.digest.sizeBytes === 0).map((i) => writeFile(i.path, Buffer.alloc(0))),
    );
    const limit = await this.batchLimit(signal);
    const { small, large } = split(unique, limit);
    const missing: Digest[] = [];
    await Promise.all([
      ...packBatches(small, limit).map((batch) =>
        this.limiter.run(async () => {
          const byKey = new Map(batch.map((i) => [digestString(i.digest), i.path]));
          const { found, missing: absent } = await this.batchRead(
            batch.map((i) => i.digest),
            signal,
          );
          missing.push(...absent);
          await forEachLimit([...found], 16, async ([key, data]) => {
            await writeFile(byKey.get(key)!, data).catch((err: unknown) => {
              throw toRemexError(err, `writing blob ${key}`);
            });
          });
        }),
      ),
      ...large.map((item) =>
        this.limiter.run(async () => {
          const found = await byteStreamRead(
            this.clients.byteStream,
            readResourceName(this.instanceName, this.digestFunction, item.digest),
            this.digestFunction,
            item.digest,
            createWriteStream(item.path),
            signal,
          );
          if (!found) {
            missing.push(item.digest);
            await rm(item.path, { force: true });
          }
        }),
      ),
    ]);
    return missing;
  }

  /** Reads blobs into memory (for messages: Actions, Commands, Directories). */
  async readBlobs(
    digests: readonly Digest[],
    signal?: AbortSignal,
  ): Promise<{ found: Map<string, Buffer>; missing: Digest[] }> {
    const unique = await this.uniqueNonEmpty(digests, (d) => d);
    const found = new Map<string, Buffer>();
    for (const d of digests)
      if (d.sizeBytes === 0 && (await this.isEmpty(d))) found.set(digestString(d), Buffer.alloc(0));
    const limit = await this.batchLimit(signal);
    const { small, large } = split(
      unique.map((digest) => ({ digest })),
      limit,
    );
    const missing: Digest[] = [];
    await Promise.all([
      ...packBatches(small, limit).map((batch) =>
        this.limiter.run(async () => {
          const r = await this.batchRead(
            batch.map((i) => i.digest),
            signal,
          );
          for (const [k, v] of r.found) found.set(k, v);
          missing.push(...r.missing);
        }),
      ),
      ...large.map(({ digest }) =>
        this.limiter.run(async () => {
          const { sink, data } = memorySink();
          const ok = await byteStreamRead(
            this.clients.byteStream,
            readResourceName(this.instanceName, this.digestFunction, digest),
            this.digestFunction,
            digest,
            sink,
            signal,
          );
          if (ok) found.set(digestString(digest), data());
          else missing.push(digest);
        }),
      ),
    ]);
    return { found, missing };
  }

  /** Reads one blob into memory; FAILED_PRECONDITION naming it when the CAS lacks it. */
  async readBlob(digest: Digest, what: string, signal?: AbortSignal): Promise<Buffer> {
    const { found, missing } = await this.readBlobs([digest], signal);
    if (missing.length > 0) throw new MissingBlobsError(missing, what);
    return found.get(digestString(digest))!;
  }

  private async batchRead(
    digests: Digest[],
    signal?: AbortSignal,
  ): Promise<{ found: Map<string, Buffer>; missing: Digest[] }> {
    const res = await unaryCall(
      this.clients.cas,
      ContentAddressableStorageService.batchReadBlobs,
      { instanceName: this.instanceName, digests, acceptableCompressors: [], digestFunction: this.fnValue },
      { signal, waitForReady: true },
    );
    const found = new Map<string, Buffer>();
    const missing: Digest[] = [];
    for (const r of res.responses) {
      const d = r.digest ?? { hash: '', sizeBytes: 0 };
      const code = (r.status?.code ?? Code.OK) as Code;
      if (code === Code.NOT_FOUND) missing.push(d);
      else if (code !== Code.OK) {
        throw new RemexError(code, `BatchReadBlobs: blob ${digestString(d)}: ${r.status?.message ?? ''}`);
      } else {
        checkReceived(d, await digestOf(this.digestFunction, r.data));
        found.set(digestString(d), r.data);
      }
    }
    return { found, missing };
  }

  /** Items deduplicated by digest, without empty blobs (which every CAS holds implicitly). */
  private async uniqueNonEmpty<T>(items: readonly T[], digest: (item: T) => Digest): Promise<T[]> {
    const empty = await emptyBlobHash(this.digestFunction);
    const unique = new Map<string, T>();
    for (const item of items) {
      const d = digest(item);
      if (d.sizeBytes === 0 && d.hash === empty) continue;
      unique.set(digestString(d), item);
    }
    return [...unique.values()];
  }
}

/** Splits items into those that fit in a batch call and those that need ByteStream. */
function split<T extends { digest: Digest }>(items: T[], limit: number): { small: T[]; large: T[] } {
  const small: T[] = [];
  const large: T[] = [];
  for (const item of items) (item.digest.sizeBytes + PER_BLOB_OVERHEAD <= limit ? small : large).push(item);
  return { small, large };
}

/** Packs small items greedily into batches whose payload plus framing stays under the limit. */
export function packBatches<T extends { digest: Digest }>(items: readonly T[], limit: number): T[][] {
  const batches: T[][] = [];
  let current: T[] = [];
  let total = 0;
  for (const item of items) {
    const cost = item.digest.sizeBytes + PER_BLOB_OVERHEAD;
    if (current.length > 0 && (total + cost > limit || current.length >= FIND_MISSING_MAX)) {
      batches.push(current);
      current = [];
      total = 0;
    }
    current.push(item);
    total += cost;
  }
  if (current.length > 0) batches.push(current);
  return batches;
}
