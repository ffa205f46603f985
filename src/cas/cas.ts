import { createReadStream } from 'node:fs';
import * as fs from 'node:fs/promises';
import { Readable } from 'node:stream';
import {
  emptyBlobHash,
  isWellFormed,
  validateDigest,
  digestOf,
  type Digest,
  type DigestFunction,
} from '../common/digest.js';
import { Code, RemexError, invalidArgument } from '../common/status.js';
import { toRemexError } from '../common/error-mapping.js';
import { describeKey, keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { CompressorValue, checkCompressor, zstdCompressBuffer, zstdDecompressBuffer } from './compression.js';
import { bufferStream, readAll } from './stream-utils.js';

export interface CasOptions {
  /** Largest total of blob bytes in one batch call (advertised in Capabilities). */
  maxBatchTotalSizeBytes: number;
}

export interface BlobStatus {
  digest: Digest;
  code: Code;
  message: string;
}

/** A complete upload in a local file, with the digest computed while it was written there. */
export interface SpooledBlob {
  path: string;
  /** Size and hash of the file's content. */
  actual: Digest;
}

export interface ReadBlob extends BlobStatus {
  data: Buffer;
  compressor: CompressorValue;
}

/**
 * Content-addressable storage semantics on top of a BlobStore: validation, the implicit
 * empty blob, hash verification of uploads, batch limits, compression. The gRPC services
 * (cas-service.ts, bytestream-service.ts) only translate messages to and from this.
 */
export class Cas {
  constructor(
    readonly store: BlobStore,
    readonly options: CasOptions,
  ) {}

  async isEmptyBlob(fn: DigestFunction, d: Digest): Promise<boolean> {
    return d.sizeBytes === 0 && d.hash === (await emptyBlobHash(fn));
  }

  /** Exact set of absent digests, deduplicated, order of first appearance; the empty blob is always present. */
  async findMissing(fn: DigestFunction, digests: readonly Digest[], ctx: StoreContext): Promise<Digest[]> {
    const empty = await emptyBlobHash(fn);
    const unique = new Map<string, BlobKey>();
    digests.forEach((d, i) => {
      const v = validateDigest(d, fn, `blob_digests[${i}]`);
      if (v.sizeBytes === 0 && v.hash === empty) return;
      const key = { fn, ...v };
      unique.set(keyString(key), key);
    });
    if (unique.size === 0) return [];
    const missing = await this.store.findMissing([...unique.values()], ctx);
    return missing.map(({ hash, sizeBytes }) => ({ hash, sizeBytes }));
  }

  /**
   * Like findMissing, for digests read out of stored messages (trees, action results)
   * rather than from a request: a malformed one cannot be present, so it counts as missing.
   */
  async findMissingStored(
    fn: DigestFunction,
    digests: readonly Digest[],
    ctx: StoreContext,
  ): Promise<Digest[]> {
    const malformed: Digest[] = [];
    const wellFormed = digests.filter((d) => {
      const ok = isWellFormed(d, fn);
      if (!ok) malformed.push(d);
      return ok;
    });
    return [...malformed, ...(await this.findMissing(fn, wellFormed, ctx))];
  }

  private checkBatchSize(total: number, what: string): void {
    if (total > this.options.maxBatchTotalSizeBytes) {
      throw invalidArgument(
        `${what} total ${total} bytes, over max_batch_total_size_bytes ${this.options.maxBatchTotalSizeBytes}; use ByteStream for large blobs`,
      );
    }
  }

  async batchUpdate(
    fn: DigestFunction,
    requests: readonly { digest: Digest | undefined; data: Buffer; compressor: number }[],
    ctx: StoreContext,
  ): Promise<BlobStatus[]> {
    this.checkBatchSize(
      requests.reduce((sum, r) => sum + r.data.length, 0),
      `BatchUpdateBlobs carries ${requests.length} blobs`,
    );
    // Validate everything first: a malformed request is rejected as a whole.
    const items = requests.map((r, i) => ({
      digest: validateDigest(r.digest, fn, `requests[${i}].digest`),
      compressor: checkCompressor(r.compressor),
      data: r.data,
    }));
    return Promise.all(
      items.map(async ({ digest, compressor, data }): Promise<BlobStatus> => {
        try {
          const raw =
            compressor === CompressorValue.ZSTD ? await zstdDecompressBuffer(data, digest.sizeBytes) : data;
          await this.putVerified({ fn, ...digest }, raw, ctx);
          return { digest, code: Code.OK, message: '' };
        } catch (err) {
          const e = toRemexError(err);
          return { digest, code: e.code, message: e.message };
        }
      }),
    );
  }

  /**
   * Stores a blob after checking that its content matches its digest: the one place where
   * what clients upload is verified (batch calls, ByteStream, inline action-result data).
   * An in-memory blob is hashed here. A spooled one comes with the digest its writer
   * computed while streaming it to disk, so it is neither hashed nor read again here; the
   * spool file is consumed whatever the outcome (renamed into a disk store, or deleted).
   */
  async putVerified(key: BlobKey, content: Buffer | SpooledBlob, ctx: StoreContext): Promise<void> {
    if (Buffer.isBuffer(content)) {
      checkContent(key, await digestOf(key.fn, content));
      if (key.sizeBytes > 0) await this.store.put(key, bufferStream(content), ctx);
      return;
    }
    try {
      checkContent(key, content.actual);
      await this.putFile(key, content.path, ctx);
    } catch (err) {
      await fs.rm(content.path, { force: true });
      throw err;
    }
  }

  /** Moves a verified file into the store (a rename for the disk store); the file is consumed. */
  private async putFile(key: BlobKey, path: string, ctx: StoreContext): Promise<void> {
    if (key.sizeBytes === 0) return fs.rm(path, { force: true }); // the empty blob is never stored
    if (this.store.putFile) return this.store.putFile(key, path, ctx);
    try {
      await this.store.put(key, createReadStream(path, { highWaterMark: 1 << 20 }), ctx);
    } finally {
      await fs.rm(path, { force: true });
    }
  }

  async batchRead(
    fn: DigestFunction,
    digests: readonly Digest[],
    acceptableCompressors: readonly number[],
    ctx: StoreContext,
  ): Promise<ReadBlob[]> {
    const valid = digests.map((d, i) => validateDigest(d, fn, `digests[${i}]`));
    this.checkBatchSize(
      valid.reduce((sum, d) => sum + d.sizeBytes, 0),
      `BatchReadBlobs asks for ${valid.length} blobs`,
    );
    const zstd = acceptableCompressors.includes(CompressorValue.ZSTD);
    return Promise.all(
      valid.map(async (digest): Promise<ReadBlob> => {
        try {
          const data = await this.getBuffer({ fn, ...digest }, ctx);
          // Compress only when the client accepts it and it pays off.
          if (zstd && data.length >= 1024) {
            const packed = await zstdCompressBuffer(data);
            if (packed.length < data.length) {
              return { digest, data: packed, compressor: CompressorValue.ZSTD, code: Code.OK, message: '' };
            }
          }
          return { digest, data, compressor: CompressorValue.IDENTITY, code: Code.OK, message: '' };
        } catch (err) {
          const e = toRemexError(err);
          return { digest, data: Buffer.alloc(0), compressor: 0, code: e.code, message: e.message };
        }
      }),
    );
  }

  /** Streams a blob (or a range of it); the empty blob needs no storage. */
  async read(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    if (await this.isEmptyBlob(key.fn, key)) return Readable.from([]);
    return this.store.get(key, range, ctx);
  }

  /** Reads a whole blob into memory: for directories, trees, action results (small by nature). */
  async getBuffer(key: BlobKey, ctx: StoreContext): Promise<Buffer> {
    const data = await readAll(await this.read(key, undefined, ctx));
    if (data.length !== key.sizeBytes) {
      throw new RemexError(Code.DATA_LOSS, `blob ${describeKey(key)} read back ${data.length} bytes`);
    }
    return data;
  }

  async exists(key: BlobKey, ctx: StoreContext): Promise<boolean> {
    if (await this.isEmptyBlob(key.fn, key)) return true;
    return (await this.store.findMissing([key], ctx)).length === 0;
  }
}

/** INVALID_ARGUMENT unless content with this size and hash is the blob the key names. */
function checkContent(key: BlobKey, actual: Digest): void {
  if (actual.sizeBytes !== key.sizeBytes) {
    throw invalidArgument(`blob ${describeKey(key)} has ${actual.sizeBytes} bytes, not ${key.sizeBytes}`);
  }
  if (actual.hash !== key.hash) {
    throw invalidArgument(`blob ${describeKey(key)} has hash ${actual.hash}: content does not match digest`);
  }
}
