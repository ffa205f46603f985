import * as fs from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Hasher } from '../common/digest.js';
import { RemexError, aborted, invalidArgument } from '../common/status.js';
import { setLongTimeout, type LongTimer } from '../common/timers.js';
import { describeKey } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import type { Cas } from './cas.js';
import { CompressorValue, ZstdChunkDecoder } from './compression.js';
import type { BlobResource } from './resource-name.js';

export interface WriteChunk {
  writeOffset: number;
  finishWrite: boolean;
  data: Buffer;
}

export interface UploadManagerOptions {
  /** Where partial uploads are spooled; on the CAS's filesystem so completion is a rename. */
  spoolDir: string;
  /** How long an interrupted upload is kept for resumption. */
  idleTimeoutMs: number;
}

/**
 * How a Write stream ended: with finish_write (the upload is complete) or without it
 * (the client may resume at committed_size, so the upload is kept).
 */
type StreamEnd = 'finished' | 'interrupted';

/** One upload in progress: its bytes so far are in a spool file, its hash state in memory. */
interface Session {
  resource: BlobResource;
  spool: string;
  file: fs.FileHandle;
  hasher: Hasher;
  /** Bytes of the stream as sent (compressed bytes for compressed uploads). */
  committed: number;
  /** Bytes of blob content written to the spool. */
  written: number;
  decoder?: ZstdChunkDecoder;
  active: boolean;
  timer?: LongTimer;
}

/**
 * ByteStream Write semantics: uploads stream to a spool file while their hash is
 * computed, so nothing large is ever held in memory; an interrupted upload keeps its
 * spool and hash state for idleTimeoutMs, so QueryWriteStatus reports committed_size
 * and a new Write can resume at that offset. A complete upload is handed to
 * Cas.putVerified with the hash computed on the way, which checks it and moves the spool
 * into the store (a rename for the disk store).
 */
/** Spool files are named <24 hex>.upload (bare <24 hex> before): start-up removes those and nothing else. */
const SPOOL_SUFFIX = '.upload';
const SPOOL_NAME = /^[0-9a-f]{24}(\.upload)?$/;

export class UploadManager {
  private readonly sessions = new Map<string, Session>();

  constructor(
    private readonly cas: Cas,
    private readonly options: UploadManagerOptions,
  ) {}

  static async create(cas: Cas, options: UploadManagerOptions): Promise<UploadManager> {
    // Spools of an earlier run cannot be resumed (their hash state is gone): remove them,
    // and only them, whatever else a misconfigured spool directory holds.
    await fs.mkdir(options.spoolDir, { recursive: true });
    const stale = (await fs.readdir(options.spoolDir)).filter((f) => SPOOL_NAME.test(f));
    await Promise.all(stale.map((f) => fs.rm(join(options.spoolDir, f), { force: true })));
    return new UploadManager(cas, options);
  }

  /** committed_size for QueryWriteStatus, or undefined when the upload is unknown. */
  async status(
    resource: BlobResource,
    ctx: StoreContext,
  ): Promise<{ committedSize: number; complete: boolean } | undefined> {
    const session = this.sessions.get(resource.uploadId!);
    if (session) return { committedSize: session.committed, complete: false };
    if (await this.cas.exists(resource.key, ctx)) {
      return {
        committedSize: resource.compressor === CompressorValue.IDENTITY ? resource.key.sizeBytes : -1,
        complete: true,
      };
    }
    return undefined;
  }

  /**
   * Receives one Write stream. `first` is the already-read first request; the rest
   * follow. Returns committed_size for the WriteResponse.
   */
  async write(
    resource: BlobResource,
    first: WriteChunk,
    rest: AsyncIterator<WriteChunk>,
    ctx: StoreContext,
  ): Promise<number> {
    const { key } = resource;
    const doneSize = resource.compressor === CompressorValue.IDENTITY ? key.sizeBytes : -1;
    const existing = this.sessions.get(resource.uploadId!);
    // Already stored (by this client earlier or anyone else): finish at once, as REAPI allows.
    if (!existing && (await this.cas.exists(key, ctx))) return doneSize;

    // Fast path: the whole blob in one message, nothing to spool.
    if (
      !existing &&
      first.finishWrite &&
      first.writeOffset === 0 &&
      resource.compressor === CompressorValue.IDENTITY
    ) {
      await this.cas.putVerified(key, first.data, ctx);
      return doneSize;
    }

    const session = await this.attach(resource, existing, first.writeOffset);
    let end: StreamEnd;
    try {
      end = await this.receive(session, first, rest);
      if (end === 'finished') await this.complete(session, ctx);
    } catch (err) {
      if (ctx.signal?.aborted || !(err instanceof RemexError)) {
        // The client went away (or the stream broke): keep what arrived for a resumed Write.
        this.detach(session);
      } else {
        await this.drop(session);
      }
      throw err;
    }
    if (end === 'interrupted') {
      this.detach(session);
      throw invalidArgument(
        `the Write stream for ${describeKey(key)} ended without finish_write after ${session.committed} bytes; resume from there`,
      );
    }
    return doneSize;
  }

  /** Appends the stream's chunks to the session until finish_write or the end of the stream. */
  private async receive(
    session: Session,
    first: WriteChunk,
    rest: AsyncIterator<WriteChunk>,
  ): Promise<StreamEnd> {
    const { key } = session.resource;
    let chunk: WriteChunk | undefined = first;
    while (chunk) {
      if (chunk !== first && chunk.writeOffset !== session.committed) {
        throw invalidArgument(
          `write_offset ${chunk.writeOffset} does not follow the ${session.committed} bytes received for ${describeKey(key)}`,
        );
      }
      await this.append(session, chunk.data);
      if (chunk.finishWrite) return 'finished';
      const next: IteratorResult<WriteChunk> = await rest.next();
      chunk = next.done ? undefined : next.value;
    }
    return 'interrupted';
  }

  private async attach(
    resource: BlobResource,
    existing: Session | undefined,
    offset: number,
  ): Promise<Session> {
    if (existing?.active) {
      throw aborted(`upload ${resource.uploadId} is already being written by another stream`);
    }
    if (existing && offset === existing.committed) {
      existing.timer?.clear();
      existing.active = true;
      return existing;
    }
    if (existing) await this.drop(existing);
    if (offset !== 0) {
      throw invalidArgument(
        `write_offset ${offset} for ${resource.uploadId}: ${existing ? `only ${existing.committed} bytes were received` : 'no such upload in progress'}; start at 0`,
      );
    }
    const spool = join(this.options.spoolDir, `${randomBytes(12).toString('hex')}${SPOOL_SUFFIX}`);
    const session: Session = {
      resource,
      spool,
      file: await fs.open(spool, 'wx'),
      hasher: await resource.key.fn.createHasher(),
      committed: 0,
      written: 0,
      active: true,
    };
    if (resource.compressor === CompressorValue.ZSTD) {
      session.decoder = new ZstdChunkDecoder(resource.key.sizeBytes);
    }
    this.sessions.set(resource.uploadId!, session);
    return session;
  }

  private async append(session: Session, data: Buffer): Promise<void> {
    if (data.length === 0) return;
    if (session.decoder) {
      for (const piece of session.decoder.decode(data)) await this.appendRaw(session, piece);
    } else {
      await this.appendRaw(session, data);
    }
    session.committed += data.length;
  }

  private async appendRaw(session: Session, data: Buffer): Promise<void> {
    const { key } = session.resource;
    if (session.written + data.length > key.sizeBytes) {
      throw invalidArgument(`upload for ${describeKey(key)} has more than ${key.sizeBytes} bytes`);
    }
    session.hasher.update(data);
    let off = 0;
    while (off < data.length) {
      const { bytesWritten } = await session.file.write(data, off, data.length - off);
      off += bytesWritten;
    }
    session.written += data.length;
  }

  /** Hands the finished spool to Cas, which verifies it against the hash computed while receiving. */
  private async complete(session: Session, ctx: StoreContext): Promise<void> {
    session.decoder?.finish();
    await session.file.close();
    this.sessions.delete(session.resource.uploadId!);
    const actual = { hash: session.hasher.digest(), sizeBytes: session.written };
    await this.cas.putVerified(session.resource.key, { path: session.spool, actual }, ctx);
  }

  private detach(session: Session): void {
    session.active = false;
    session.timer = setLongTimeout(() => void this.drop(session), this.options.idleTimeoutMs, {
      unref: true,
    });
  }

  private async drop(session: Session): Promise<void> {
    session.timer?.clear();
    if (this.sessions.get(session.resource.uploadId!) === session)
      this.sessions.delete(session.resource.uploadId!);
    await session.file.close().catch(() => undefined);
    await fs.rm(session.spool, { force: true });
  }

  /** Uploads currently kept (for tests and metrics). */
  get size(): number {
    return this.sessions.size;
  }

  async close(): Promise<void> {
    await Promise.all([...this.sessions.values()].map((s) => this.drop(s)));
  }
}
