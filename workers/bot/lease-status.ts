import { toRemexError } from '../../src/common/error-mapping.js';
import { Code } from '../../src/common/status.js';
import { PreconditionFailure } from '../../src/gen/google/rpc/error_details.js';
import type { Status } from '../../src/gen/google/rpc/status.js';
import { MissingBlobsError } from '../../src/remote/missing-blobs-error.js';

const PRECONDITION_FAILURE_URL = 'type.googleapis.com/google.rpc.PreconditionFailure';

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
