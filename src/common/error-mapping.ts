import { Code, RemexError } from './status.js';

/**
 * The one place that maps errors of the platform and of storage clients (Node fs,
 * pg, ioredis, the AWS S3 client) to status codes. Anything unrecognised stays UNKNOWN
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

/** PostgreSQL SQLSTATE classes and codes (pg puts them in err.code). */
function pgCode(sqlstate: string): Code | undefined {
  if (!/^[0-9A-Z]{5}$/.test(sqlstate)) return undefined;
  if (sqlstate === '40001' || sqlstate === '40P01') return Code.ABORTED; // serialization failure, deadlock
  if (sqlstate === '57014') return Code.CANCELLED; // query_canceled
  if (sqlstate === '53300' || sqlstate.startsWith('53')) return Code.RESOURCE_EXHAUSTED; // too many connections, disk full
  if (sqlstate.startsWith('08') || sqlstate.startsWith('57P')) return Code.UNAVAILABLE; // connection, shutdown
  if (sqlstate === '23505') return Code.ALREADY_EXISTS;
  return undefined;
}

/** AWS SDK v3 errors carry name and $metadata.httpStatusCode. */
function s3Code(err: { name?: string; $metadata?: { httpStatusCode?: number } }): Code | undefined {
  const status = err.$metadata?.httpStatusCode;
  // A missing bucket is also a 404, but it is the deployment that is wrong, not the key.
  if (err.name === 'NoSuchBucket') return Code.FAILED_PRECONDITION;
  if (err.name === 'NoSuchKey' || err.name === 'NotFound' || status === 404) return Code.NOT_FOUND;
  if (err.name === 'SlowDown' || status === 503 || status === 500 || status === 502) return Code.UNAVAILABLE;
  if (status === 403 || err.name === 'AccessDenied') return Code.PERMISSION_DENIED;
  if (status === 416) return Code.OUT_OF_RANGE;
  if (status !== undefined && status >= 400) return Code.UNKNOWN;
  return undefined;
}

/** pg: errors of a lost connection or closed pool, which carry no SQLSTATE. */
function pgConnectionCode(err: Error): Code | undefined {
  if (
    /^(Connection terminated|Cannot use a pool after calling end|Client has encountered a connection error)/.test(
      err.message,
    )
  )
    return Code.UNAVAILABLE;
  return undefined;
}

/** ioredis: errors of a closed or unreachable connection, and replies that mean "later". */
function redisCode(err: Error): Code | undefined {
  if (err.name === 'MaxRetriesPerRequestError') return Code.UNAVAILABLE;
  if (/^(Connection is closed|Stream isn't writeable|connect E|Command timed out)/.test(err.message))
    return Code.UNAVAILABLE;
  if (err.name === 'ReplyError' && /^(LOADING|MASTERDOWN|READONLY|CLUSTERDOWN|TRYAGAIN)/.test(err.message))
    return Code.UNAVAILABLE;
  if (err.name === 'ReplyError' && /^OOM/.test(err.message)) return Code.RESOURCE_EXHAUSTED;
  return undefined;
}

export function toRemexError(err: unknown, context?: string): RemexError {
  if (err instanceof RemexError) return context ? err.prefixed(context) : err;
  const prefix = context ? `${context}: ` : '';
  if (isAbortError(err))
    return new RemexError(Code.CANCELLED, `${prefix}operation cancelled`, { cause: err });
  const errno = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof errno === 'string' && errno in fsCodes) {
    return new RemexError(fsCodes[errno]!, `${prefix}${(err as Error).message}`, { cause: err });
  }
  if (err instanceof Error) {
    const code =
      (typeof errno === 'string' ? pgCode(errno) : undefined) ??
      ('$metadata' in err ? s3Code(err as Error & { $metadata?: { httpStatusCode?: number } }) : undefined) ??
      pgConnectionCode(err) ??
      redisCode(err);
    if (code !== undefined)
      return new RemexError(code, `${prefix}${err.message || err.name}`, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new RemexError(Code.UNKNOWN, `${prefix}${message}`, { cause: err });
}

export function isAbortError(err: unknown): boolean {
  return (
    err instanceof Error && (err.name === 'AbortError' || (err as NodeJS.ErrnoException).code === 'ABORT_ERR')
  );
}
