import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { toRemexError } from '../common/error-mapping.js';
import { Code } from '../common/status.js';
import { Status } from '../gen/google/rpc/status.js';
import { log } from '../common/log.js';

/**
 * The one place where anything thrown by a handler becomes a gRPC status. RemexErrors keep
 * their code and message; anything else becomes UNKNOWN for the client, details in the log.
 */
export function toServiceError(err: unknown, method: string): ServiceError {
  const e = toRemexError(err);
  if (e.code === Code.UNKNOWN || e.code === Code.INTERNAL || e.code === Code.DATA_LOSS) {
    log.error({ err: e.cause ?? e, method }, 'request failed');
  } else {
    log.debug({ code: Code[e.code], msg: e.message, method }, 'request rejected');
  }
  const message =
    e.code === Code.UNKNOWN && !(err instanceof Error && err.name === 'RemexError')
      ? `internal error in ${method} (details are in the server log)`
      : e.message;
  const metadata = new Metadata();
  if (e.details.length > 0) {
    // The rich status (google.rpc.Status with details) travels in this trailer, as gRPC specifies.
    const rich = Status.encode({ code: e.code, message, details: e.details }).finish();
    metadata.set('grpc-status-details-bin', Buffer.from(rich));
  }
  return Object.assign(new Error(message), {
    code: e.code as number as status,
    details: message,
    metadata,
  });
}
