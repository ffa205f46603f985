import { Code, RemexError } from './status.js';

/**
 * The one place that maps errors of the platform and of storage clients (Node fs,
 * and later pg / ioredis / S3) to status codes. Anything unrecognised stays UNKNOWN
 * for the client; the server edge logs the details.
 */
const fsCodes: Record<string, Code> = {
  ENOENT: Code.NOT_FOUND,
  ENOSPC: Code.RESOURCE_EXHAUSTED,
  EDQUOT: Code.RESOURCE_EXHAUSTED,
  EMFILE: Code.RESOURCE_EXHAUSTED,
  ENFILE: Code.RESOURCE_EXHAUSTED,
  EACCES: Code.PERMISSION_DENIED,
  EPERM: Code.PERMISSION_DENIED,
  EROFS: Code.FAILED_PRECONDITION,
  EIO: Code.DATA_LOSS,
  ECONNREFUSED: Code.UNAVAILABLE,
  ECONNRESET: Code.UNAVAILABLE,
  ETIMEDOUT: Code.DEADLINE_EXCEEDED,
};

export function toRemexError(err: unknown, context?: string): RemexError {
  if (err instanceof RemexError) return context ? err.prefixed(context) : err;
  const prefix = context ? `${context}: ` : '';
  if (isAbortError(err))
    return new RemexError(Code.CANCELLED, `${prefix}operation cancelled`, { cause: err });
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof errno === 'string' && errno in fsCodes) {
    return new RemexError(fsCodes[errno]!, `${prefix}${(err as Error).message}`, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new RemexError(Code.UNKNOWN, `${prefix}${message}`, { cause: err });
}

export function isAbortError(err: unknown): boolean {
  return (
    err instanceof Error && (err.name === 'AbortError' || (err as NodeJS.ErrnoException).code === 'ABORT_ERR')
  );
}
