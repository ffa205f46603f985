import { digestString, type Digest } from '../src/common/digest.js';
import { toRemexError } from '../src/common/error-mapping.js';
import { Code, RemexError } from '../src/common/status.js';
import { PreconditionFailure } from '../src/gen/google/rpc/error_details.js';
import type { Status } from '../src/gen/google/rpc/status.js';

const PRECONDITION_FAILURE_URL = 'type.googleapis.com/google.rpc.PreconditionFailure';
const LISTED = 10;

/**
 * Blobs an action needs are not in the CAS. Becomes FAILED_PRECONDITION with a
 * google.rpc.PreconditionFailure detail per blob (type "MISSING", subject
 * "blobs/{hash}/{size}"), as REAPI asks, so that clients such as Bazel re-upload them.
 */
export class MissingBlobsError extends RemexError {
  constructor(
    readonly missing: readonly Digest[],
    what: string,
  ) {
    const listed = missing.slice(0, LISTED).map(digestString).join(', ');
    const more = missing.length > LISTED ? ` and ${missing.length - LISTED} more` : '';
    super(
      Code.FAILED_PRECONDITION,
      `${what}: ${missing.length} blob${missing.length === 1 ? '' : 's'} missing from the CAS: ${listed}${more}`,
    );
    this.name = 'MissingBlobsError';
  }
}

/** Any thrown value as a google.rpc.Status for a lease (missing blobs carry their details). */
export function toStatus(err: unknown): Status {
  if (err instanceof MissingBlobsError) {
    const failure = PreconditionFailure.encode({
      violations: err.missing.map((d) => ({
        type: 'MISSING',
        subject: `blobs/${d.hash}/${d.sizeBytes}`,
        description: '',
      })),
    }).finish();
    return {
      code: err.code,
      message: err.message,
      details: [{ typeUrl: PRECONDITION_FAILURE_URL, value: Buffer.from(failure) }],
    };
  }
  const e = toRemexError(err);
  return { code: e.code, message: e.message, details: [] };
}

export const OK_STATUS: Status = { code: Code.OK, message: '', details: [] };
