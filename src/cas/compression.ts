import type { Transform, TransformCallback } from 'node:stream';
import { CompressStream, DecompressStream } from 'zstd-napi';
import binding from 'zstd-napi/binding.js';
import { RemexError, invalidArgument } from '../common/status.js';

/** Values of build.bazel.remote.execution.v2.Compressor.Value that remex implements. */
export enum CompressorValue {
  IDENTITY = 0,
  ZSTD = 1,
}

/** Compressors advertised in Capabilities: zstd both ways (ByteStream and batch calls). */
export const SUPPORTED_COMPRESSORS = [CompressorValue.ZSTD];

/** The compressor named in a ByteStream compressed-blobs resource name. */
export function compressorBySegment(segment: string): CompressorValue {
  if (segment === 'zstd') return CompressorValue.ZSTD;
  throw invalidArgument(`unsupported compressor "${segment}" in resource name; this server supports zstd`);
}

export function checkCompressor(value: number): CompressorValue {
  if (value === CompressorValue.IDENTITY || value === CompressorValue.ZSTD) return value;
  throw invalidArgument(`unsupported compressor ${value}; this server supports IDENTITY and ZSTD`);
}

export function zstdCompressStream(): Transform {
  return new CompressStream({ compressionLevel: 3 });
}

/**
 * A zstd decoder that fails with INVALID_ARGUMENT as soon as its output exceeds
 * maxBytes, so a small hostile frame cannot expand into gigabytes, and that reports
 * corrupt input as INVALID_ARGUMENT rather than an unknown error.
 */
class BoundedZstdDecoder extends DecompressStream {
  private produced = 0;

  constructor(private readonly maxBytes: number) {
    super();
  }

  override push(chunk: Buffer | null, encoding?: BufferEncoding): boolean {
    if (chunk !== null) {
      this.produced += chunk.length;
      if (this.produced > this.maxBytes) {
        throw invalidArgument(`zstd data decompresses to more than the declared ${this.maxBytes} bytes`);
      }
    }
    return super.push(chunk, encoding);
  }

  override _transform(chunk: Buffer, encoding: BufferEncoding, done: TransformCallback): void {
    super._transform(chunk, encoding, (err) => done(wrapZstdError(err)));
  }

  override _flush(done: TransformCallback): void {
    super._flush((err) => done(wrapZstdError(err)));
  }
}

function wrapZstdError(err: Error | null | undefined): Error | null {
  if (!err) return null;
  return err instanceof RemexError ? err : invalidArgument(`invalid zstd data: ${err.message}`);
}

export function zstdDecompressStream(maxBytes: number): Transform {
  return new BoundedZstdDecoder(maxBytes);
}

/** Decompresses one in-memory zstd blob (batch calls), bounded by the declared size. */
export function zstdDecompressBuffer(data: Buffer, expectedSize: number): Promise<Buffer> {
  return transformBuffer(zstdDecompressStream(expectedSize), data);
}

export function zstdCompressBuffer(data: Buffer): Promise<Buffer> {
  return transformBuffer(zstdCompressStream(), data);
}

function transformBuffer(stream: Transform, data: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  return new Promise<Buffer>((resolve, reject) => {
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => resolve(Buffer.concat(chunks)));
    stream.on('error', reject);
    stream.end(data);
  });
}

const OUT_CHUNK = binding.dStreamOutSize();

/**
 * Synchronous, incremental zstd decoding for uploads that arrive in pieces across
 * several streams (resumable ByteStream writes): decode() returns what each piece
 * yields, finish() checks that the last frame was complete. Output beyond maxBytes is
 * INVALID_ARGUMENT.
 */
export class ZstdChunkDecoder {
  private readonly dctx = new binding.DCtx();
  private inFrame = false;
  private produced = 0;

  constructor(private readonly maxBytes: number) {}

  decode(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let src = chunk;
    try {
      for (;;) {
        const dst = Buffer.allocUnsafe(OUT_CHUNK);
        const [ret, produced, consumed] = this.dctx.decompressStream(dst, src);
        if (produced > 0) {
          this.produced += produced;
          if (this.produced > this.maxBytes) {
            throw invalidArgument(`zstd data decompresses to more than the declared ${this.maxBytes} bytes`);
          }
          out.push(dst.subarray(0, produced));
        }
        src = src.subarray(consumed);
        if (src.length === 0 && (produced < dst.length || ret === 0)) {
          this.inFrame = ret !== 0;
          return out;
        }
      }
    } catch (err) {
      throw wrapZstdError(err as Error)!;
    }
  }

  finish(): void {
    if (this.inFrame) throw invalidArgument('zstd data ends in the middle of a frame');
  }
}
