import { Readable, Transform, pipeline } from 'node:stream';
import {
  GetObjectCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError, invalidArgument } from '../common/status.js';
import { describeKey, keyString, type BlobKey, type BlobStore, type ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import { rangeBounds } from './stream-utils.js';

export interface S3BlobStoreOptions {
  /** S3-compatible endpoint, e.g. http://minio:9000; omitted for AWS S3 itself. */
  endpoint?: string;
  region: string;
  bucket: string;
  /** Prepended to every object key, e.g. "cas/". */
  prefix?: string;
  /** Path-style URLs (endpoint/bucket/key), as most S3-compatible servers need. */
  forcePathStyle?: boolean;
  /** Static credentials; when absent the SDK's default chain (env, profile, IMDS, IRSA) is used. */
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Multipart part size in bytes (at least 5 MiB); blobs up to this size are one PutObject. Default 16 MiB. */
  partSize?: number;
  /** Parts of one multipart upload in flight at once; an upload buffers about (queueSize + 1) parts. Default 2. */
  queueSize?: number;
  /** HeadObject requests in flight at once in findMissing. Default 32. */
  findMissingConcurrency?: number;
  name?: string;
}

export const DEFAULT_PART_SIZE = 16 << 20;
const MIN_PART_SIZE = 5 << 20;

/**
 * CAS in an S3 bucket (AWS S3 or an S3-compatible server): one object per blob at
 * `<prefix><function>/<hash>-<size>`. Source of truth: the bucket.
 *
 * put never creates a partial object: blobs up to partSize are buffered, counted and sent
 * with one PutObject; larger ones stream through a multipart upload that is completed
 * only when the stream ended with exactly sizeBytes bytes, and aborted otherwise (an
 * AbortIncompleteMultipartUpload lifecycle rule on the bucket sweeps up parts of uploads
 * whose abort failed too). findMissing sends one HeadObject per key, with bounded
 * concurrency: put an index in front (IndexedBlobStore) to avoid that.
 *
 * Credentials are handed to the SDK and nowhere else: errors carry the S3 error's name,
 * message and HTTP status only, never the raw SDK error with its request details.
 */
export class S3BlobStore implements BlobStore {
  readonly name: string;
  private readonly client: S3Client;
  private readonly bucket: string;
  private readonly prefix: string;
  private readonly partSize: number;
  private readonly queueSize: number;
  private readonly concurrency: number;
  private readonly secrets: string[];

  constructor(options: S3BlobStoreOptions) {
    this.name = options.name ?? 's3';
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? '';
    this.partSize = options.partSize ?? DEFAULT_PART_SIZE;
    this.queueSize = options.queueSize ?? 2;
    this.concurrency = options.findMissingConcurrency ?? 32;
    if (!Number.isSafeInteger(this.partSize) || this.partSize < MIN_PART_SIZE)
      throw invalidArgument(`${this.name}: partSize must be at least ${MIN_PART_SIZE} bytes (5 MiB)`);
    if (!(this.queueSize >= 1) || !(this.concurrency >= 1))
      throw invalidArgument(`${this.name}: queueSize and findMissingConcurrency must be at least 1`);
    if ((options.accessKeyId === undefined) !== (options.secretAccessKey === undefined))
      throw invalidArgument(`${this.name}: set both accessKeyId and secretAccessKey, or neither`);
    this.secrets = [options.accessKeyId, options.secretAccessKey].filter((s): s is string => !!s);
    const config: S3ClientConfig = {
      region: options.region,
      forcePathStyle: options.forcePathStyle ?? false,
    };
    if (options.endpoint !== undefined) config.endpoint = options.endpoint;
    if (options.accessKeyId !== undefined && options.secretAccessKey !== undefined)
      config.credentials = { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey };
    this.client = new S3Client(config);
  }

  /** The object key of a blob. */
  objectKey(key: BlobKey): string {
    return `${this.prefix}${keyString(key)}`;
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    const [start, end] = rangeBounds(key.sizeBytes, range);
    if (start >= end) {
      // S3 cannot serve an empty range (416); check the object exists and send nothing.
      if (!(await this.exists(key, ctx))) throw this.notFound(key);
      return Readable.from([]);
    }
    try {
      const out = await this.client.send(
        new GetObjectCommand({
          Bucket: this.bucket,
          Key: this.objectKey(key),
          Range: start === 0 && end === key.sizeBytes ? undefined : `bytes=${start}-${end - 1}`,
        }),
        { abortSignal: ctx.signal },
      );
      if (!(out.Body instanceof Readable))
        throw new RemexError(Code.INTERNAL, `${this.name}: get ${describeKey(key)}: response has no body`);
      return out.Body;
    } catch (err) {
      const e = this.failure(err, `get ${describeKey(key)}`);
      throw e.code === Code.NOT_FOUND ? this.notFound(key) : e;
    }
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    if (key.sizeBytes > this.partSize) return this.putMultipart(key, data, ctx);
    let body: Buffer;
    try {
      body = await collect(data, key, ctx.signal);
    } catch (err) {
      data.destroy();
      throw this.failure(err, `put ${describeKey(key)}`);
    }
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: this.objectKey(key),
          Body: body,
          ContentLength: body.length,
        }),
        { abortSignal: ctx.signal },
      );
    } catch (err) {
      throw this.failure(err, `put ${describeKey(key)}`);
    }
  }

  /**
   * Streams a large blob as a multipart upload, holding about (queueSize + 1) parts in
   * memory. The byte counter fails the stream instead of ending it when the count is
   * wrong, so the upload sees an error and aborts rather than completing.
   */
  private async putMultipart(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    let received = 0;
    let sourceError: unknown;
    const counter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        received += chunk.length;
        if (received > key.sizeBytes)
          cb(invalidArgument(`blob ${describeKey(key)} has more data than its size`));
        else cb(null, chunk);
      },
      flush(cb) {
        if (received === key.sizeBytes) cb();
        else
          cb(invalidArgument(`blob ${describeKey(key)} ended after ${received} of ${key.sizeBytes} bytes`));
      },
    });
    pipeline(data, counter, (err) => {
      if (err) sourceError ??= err;
    });
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    ctx.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      ctx.signal?.throwIfAborted();
      const upload = new Upload({
        client: this.client,
        params: { Bucket: this.bucket, Key: this.objectKey(key), Body: counter },
        partSize: this.partSize,
        queueSize: this.queueSize,
        leavePartsOnError: false,
        abortController: controller,
      });
      await upload.done();
    } catch (err) {
      // The stream's own failure is the cause worth reporting, not the abort that followed it.
      const cause = sourceError ?? (ctx.signal?.aborted ? ctx.signal.reason : err);
      counter.destroy();
      data.destroy();
      throw this.failure(cause, `put ${describeKey(key)}`);
    } finally {
      ctx.signal?.removeEventListener('abort', onAbort);
    }
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    const present = new Array<boolean>(keys.length);
    let next = 0;
    let failed = false;
    const worker = async () => {
      while (!failed && next < keys.length) {
        const i = next++;
        try {
          present[i] = await this.exists(keys[i]!, ctx);
        } catch (err) {
          failed = true;
          throw err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.concurrency, keys.length) }, worker));
    return keys.filter((_, i) => !present[i]);
  }

  async close(): Promise<void> {
    this.client.destroy();
  }

  private async exists(key: BlobKey, ctx: StoreContext): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.bucket, Key: this.objectKey(key) }), {
        abortSignal: ctx.signal,
      });
      return true;
    } catch (err) {
      const e = this.failure(err, `head ${describeKey(key)}`);
      if (e.code === Code.NOT_FOUND) return false;
      throw e;
    }
  }

  private notFound(key: BlobKey): RemexError {
    return new RemexError(
      Code.NOT_FOUND,
      `${this.name}: blob ${describeKey(key)} not found (no object ${this.objectKey(key)} in bucket ${this.bucket})`,
    );
  }

  /**
   * A status for any failure, prefixed with the store's name. SDK errors are replaced by a
   * plain summary (name, message, HTTP status): their other fields (AWSAccessKeyId,
   * StringToSign, the raw response) must not reach the log. Configured credentials are
   * masked should a message ever quote them.
   */
  private failure(err: unknown, what: string): RemexError {
    const mapped = toRemexError(err, `${this.name}: ${what}`);
    let message = mapped.message;
    for (const secret of this.secrets) message = message.replaceAll(secret, '***');
    return new RemexError(mapped.code, message, { cause: summarize(err), details: mapped.details });
  }
}

/** Reads a stream of at most key.sizeBytes bytes into one buffer; any other length fails. */
async function collect(data: Readable, key: BlobKey, signal?: AbortSignal): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let received = 0;
  for await (const chunk of data) {
    signal?.throwIfAborted();
    received += (chunk as Buffer).length;
    if (received > key.sizeBytes)
      throw invalidArgument(`blob ${describeKey(key)} has more data than its size`);
    chunks.push(chunk as Buffer);
  }
  if (received !== key.sizeBytes)
    throw invalidArgument(`blob ${describeKey(key)} ended after ${received} of ${key.sizeBytes} bytes`);
  return Buffer.concat(chunks, received);
}

function summarize(err: unknown): unknown {
  if (!(err instanceof Error) || !('$metadata' in err)) return err;
  const meta = (err as { $metadata?: { httpStatusCode?: number; requestId?: string } }).$metadata;
  const summary = new Error(err.message || err.name);
  summary.name = err.name;
  return Object.assign(summary, { httpStatusCode: meta?.httpStatusCode, requestId: meta?.requestId });
}
