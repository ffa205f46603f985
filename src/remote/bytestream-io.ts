import type { Client } from '@grpc/grpc-js';
import { once } from 'node:events';
import { createReadStream } from 'node:fs';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { digestString, type Digest, type DigestFunction } from '../common/digest.js';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError } from '../common/status.js';
import { ByteStreamService, type ReadResponse } from '../gen/google/bytestream/bytestream.js';
import { clientStreamCall, fromServiceError, isServiceError, serverStreamCall } from './grpc-call.js';

/**
 * Streams one blob through google.bytestream: Read into any Writable (a file, or memory),
 * checking size and hash as it goes; Write from a file or buffer in chunks, respecting
 * back-pressure. Never holds a whole large blob in memory.
 */

/** Where a blob to upload comes from: bytes in memory or a file on disk. */
export type BlobSource = { data: Buffer } | { path: string };

const INFERABLE = new Set(['SHA256', 'SHA1', 'MD5', 'SHA384', 'SHA512']);

/** The "{function/}{hash}/{size}" tail of a resource name (function only where REAPI requires it). */
function blobPath(fn: DigestFunction, d: Digest): string {
  return `${INFERABLE.has(fn.name) ? '' : `${fn.segment}/`}${d.hash}/${d.sizeBytes}`;
}

export function readResourceName(instanceName: string, fn: DigestFunction, d: Digest): string {
  return `${instanceName ? `${instanceName}/` : ''}blobs/${blobPath(fn, d)}`;
}

export function writeResourceName(
  instanceName: string,
  fn: DigestFunction,
  d: Digest,
  uploadId: string,
): string {
  return `${instanceName ? `${instanceName}/` : ''}uploads/${uploadId}/blobs/${blobPath(fn, d)}`;
}

/** Checks received bytes against the digest that was asked for; DATA_LOSS when they differ. */
export function checkReceived(d: Digest, actual: Digest): void {
  if (actual.sizeBytes !== d.sizeBytes || actual.hash !== d.hash) {
    throw new RemexError(
      Code.DATA_LOSS,
      `blob ${digestString(d)} arrived from the CAS as ${digestString(actual)}: content does not match its digest`,
    );
  }
}

/**
 * Reads a blob into `sink`. Resolves false when the CAS does not have it (NOT_FOUND), true
 * once every byte is written and verified.
 */
export async function byteStreamRead(
  client: Client,
  resourceName: string,
  fn: DigestFunction,
  d: Digest,
  sink: Writable,
  signal?: AbortSignal,
): Promise<boolean> {
  const hasher = await fn.createHasher();
  let sizeBytes = 0;
  const call = serverStreamCall(
    client,
    ByteStreamService.read,
    { resourceName, readOffset: 0, readLimit: 0 },
    { signal, waitForReady: true },
  );
  const extract = new Transform({
    writableObjectMode: true,
    transform(msg: ReadResponse, _encoding, callback) {
      hasher.update(msg.data);
      sizeBytes += msg.data.length;
      callback(null, msg.data);
    },
  });
  try {
    await pipeline(call, extract, sink);
  } catch (err) {
    const e = isServiceError(err)
      ? fromServiceError(err, ByteStreamService.read.path)
      : toRemexError(err, `reading blob ${digestString(d)}`);
    if (e.code === Code.NOT_FOUND) return false;
    throw e;
  }
  checkReceived(d, { hash: hasher.digest(), sizeBytes });
  return true;
}

/** A Writable that gathers what it is given into one Buffer (for small messages only). */
export function memorySink(): { sink: Writable; data: () => Buffer } {
  const parts: Buffer[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      parts.push(chunk);
      callback();
    },
  });
  return { sink, data: () => Buffer.concat(parts) };
}

function* chunksOf(data: Buffer, size: number): Generator<Buffer> {
  for (let offset = 0; offset < data.length; offset += size) yield data.subarray(offset, offset + size);
}

/** Uploads one blob through ByteStream.Write, streamed from its source in chunks. */
export async function byteStreamWrite(
  client: Client,
  resourceName: string,
  d: Digest,
  source: BlobSource,
  chunkBytes: number,
  signal?: AbortSignal,
): Promise<void> {
  const { call, response, settled } = clientStreamCall(client, ByteStreamService.write, {
    signal,
    waitForReady: true,
  });
  const what = 'path' in source ? `file ${source.path}` : `blob ${digestString(d)}`;
  let offset = 0;
  try {
    const chunks =
      'path' in source
        ? createReadStream(source.path, { highWaterMark: chunkBytes })
        : chunksOf(source.data, chunkBytes);
    for await (const chunk of chunks) {
      // The server may answer before the end, e.g. when it already holds the blob.
      if (settled()) break;
      const data = chunk as Buffer;
      const finishWrite = offset + data.length >= d.sizeBytes;
      const ready = call.write({
        resourceName: offset === 0 ? resourceName : '',
        writeOffset: offset,
        finishWrite,
        data,
      });
      offset += data.length;
      if (!ready) await Promise.race([once(call, 'drain'), response]);
    }
  } catch (err) {
    call.cancel();
    throw isServiceError(err) || err instanceof RemexError
      ? fromServiceError(err, ByteStreamService.write.path)
      : toRemexError(err, `uploading ${what}`);
  }
  if (!settled() && offset !== d.sizeBytes) {
    call.cancel();
    throw new RemexError(
      Code.FAILED_PRECONDITION,
      `uploading ${what}: it has ${offset} bytes but its digest ${digestString(d)} says ${d.sizeBytes}`,
    );
  }
  call.end();
  const { committedSize } = await response;
  if (committedSize !== d.sizeBytes) {
    throw new RemexError(
      Code.DATA_LOSS,
      `uploading ${what}: the CAS committed ${committedSize} of ${d.sizeBytes} bytes of ${digestString(d)}`,
    );
  }
}
