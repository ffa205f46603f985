import { Metadata, status, type ServiceError } from '@grpc/grpc-js';
import { toRemexError } from '../common/error-mapping.js';
import { Code } from '../common/status.js';
import { log } from './log.js';

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
  return Object.assign(new Error(message), {
    code: e.code as number as status,
    details: message,
    metadata: new Metadata(),
  });
}
