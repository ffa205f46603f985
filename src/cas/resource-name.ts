import {
  digestFunctionBySegment,
  resolveDigestFunction,
  validateDigest,
  type DigestFunction,
} from '../common/digest.js';
import { invalidArgument } from '../common/status.js';
import type { Instances } from '../common/instances.js';
import type { BlobKey } from './blob-store.js';
import { CompressorValue, compressorBySegment } from './compression.js';

export interface BlobResource {
  instanceName: string;
  key: BlobKey;
  compressor: CompressorValue;
  /** For uploads: the client's upload id (the resource up to and including the size). */
  uploadId?: string;
}

/**
 * Parses ByteStream resource names as REAPI specifies them:
 *   read:  {instance}/blobs/{function/}{hash}/{size}
 *          {instance}/compressed-blobs/{compressor}/{function/}{hash}/{size}
 *   write: {instance}/uploads/{uuid}/blobs/{function/}{hash}/{size}{/metadata...}
 *          {instance}/uploads/{uuid}/compressed-blobs/{compressor}/{function/}{hash}/{size}{/metadata...}
 * The instance name may itself contain slashes; the function segment is optional for
 * functions inferable from the hash length.
 */
export function parseReadResource(name: string, instances: Instances): BlobResource {
  const parts = name.split('/');
  const at = parts.findIndex((p) => p === 'blobs' || p === 'compressed-blobs');
  if (at < 0) throw badName(name, 'expected "{instance}/blobs/{hash}/{size}"');
  const parsed = parseBlobPart(parts, at, name, false);
  return { instanceName: checkInstance(parts.slice(0, at), instances), ...parsed };
}

export function parseWriteResource(name: string, instances: Instances): BlobResource {
  const parts = name.split('/');
  const at = parts.findIndex((p) => p === 'uploads');
  if (at < 0 || at + 2 >= parts.length) {
    throw badName(name, 'expected "{instance}/uploads/{uuid}/blobs/{hash}/{size}"');
  }
  if (parts[at + 1] === '') throw badName(name, 'the upload id is empty');
  const parsed = parseBlobPart(parts, at + 2, name, true);
  return { instanceName: checkInstance(parts.slice(0, at), instances), ...parsed };
}

function checkInstance(segments: string[], instances: Instances): string {
  return instances.check(segments.join('/'));
}

function parseBlobPart(
  parts: string[],
  at: number,
  name: string,
  allowMetadata: boolean,
): { key: BlobKey; compressor: CompressorValue; uploadId: string } {
  let i = at + 1;
  let compressor = CompressorValue.IDENTITY;
  if (parts[at] === 'compressed-blobs') {
    const segment = parts[i++];
    if (segment === undefined) throw badName(name, 'the compressor is missing');
    compressor = compressorBySegment(segment);
  } else if (parts[at] !== 'blobs') {
    throw badName(name, `expected "blobs" or "compressed-blobs" after the upload id, found "${parts[at]}"`);
  }
  // Optional digest function segment: present when three or more segments remain and
  // the next one is not a hash followed by a size.
  let fn: DigestFunction | undefined;
  const next = parts[i];
  if (next !== undefined && parts.length - i >= 3 && !/^[0-9]+$/.test(parts[i + 1] ?? '')) {
    fn = digestFunctionBySegment(next);
    if (!fn) throw invalidArgument(`unknown digest function "${next}" in resource name "${name}"`);
    i++;
  }
  const hash = parts[i];
  const sizeText = parts[i + 1];
  if (hash === undefined || sizeText === undefined) throw badName(name, 'the hash or size is missing');
  if (!/^[0-9]+$/.test(sizeText)) throw badName(name, `size "${sizeText}" is not a non-negative integer`);
  if (!allowMetadata && parts.length > i + 2) throw badName(name, 'unexpected segments after the size');
  const digestFn = fn ?? resolveDigestFunction(0, hash);
  const digest = validateDigest({ hash, sizeBytes: Number(sizeText) }, digestFn, 'resource name digest');
  return { key: { fn: digestFn, ...digest }, compressor, uploadId: parts.slice(0, i + 2).join('/') };
}

function badName(name: string, why: string) {
  return invalidArgument(`invalid resource name "${name.slice(0, 300)}": ${why}`);
}
