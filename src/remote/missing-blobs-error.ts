import { digestString, type Digest } from '../common/digest.js';
import { Code, RemexError } from '../common/status.js';

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
