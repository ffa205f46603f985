import { describe, expect, it } from 'vitest';
import { isAbortError, toRemexError } from './error-mapping.js';
import { Code, RemexError } from './status.js';

const errno = (code: string, message = `${code}: something`) =>
  Object.assign(new Error(message), { code }) as NodeJS.ErrnoException;
const s3 = (name: string, httpStatusCode?: number) =>
  Object.assign(new Error(`${name} from S3`), { name, $metadata: { httpStatusCode } });
const named = (name: string, message: string) => Object.assign(new Error(message), { name });

describe('toRemexError', () => {
  it('keeps a RemexError, prefixing the context and keeping code, cause and details', () => {
    const cause = new Error('root');
    const details = [{ typeUrl: 'type.googleapis.com/x', value: Buffer.from([1]) }];
    const original = new RemexError(Code.NOT_FOUND, 'no blob', { cause, details });
    expect(toRemexError(original)).toBe(original);
    const mapped = toRemexError(original, 'cas');
    expect(mapped).toMatchObject({ code: Code.NOT_FOUND, message: 'cas: no blob', cause, details });
  });

  it.each([
    ['ENOENT', Code.NOT_FOUND],
    ['ENOSPC', Code.RESOURCE_EXHAUSTED],
    ['EDQUOT', Code.RESOURCE_EXHAUSTED],
    ['EMFILE', Code.RESOURCE_EXHAUSTED],
    ['ENFILE', Code.RESOURCE_EXHAUSTED],
    ['EACCES', Code.PERMISSION_DENIED],
    ['EPERM', Code.PERMISSION_DENIED],
    ['EROFS', Code.FAILED_PRECONDITION],
    ['EIO', Code.DATA_LOSS],
    ['ECONNREFUSED', Code.UNAVAILABLE],
    ['ECONNRESET', Code.UNAVAILABLE],
    ['ETIMEDOUT', Code.DEADLINE_EXCEEDED],
  ])('maps the Node error %s to %s, with the context and message', (code, expected) => {
    const err = errno(code);
    const mapped = toRemexError(err, 'disk');
    expect(mapped.code).toBe(expected);
    expect(mapped.message).toBe(`disk: ${code}: something`);
    expect(mapped.cause).toBe(err);
  });

  it.each([
    ['40001', Code.ABORTED],
    ['40P01', Code.ABORTED],
    ['57014', Code.CANCELLED],
    ['53300', Code.RESOURCE_EXHAUSTED],
    ['53100', Code.RESOURCE_EXHAUSTED],
    ['08006', Code.UNAVAILABLE],
    ['57P01', Code.UNAVAILABLE],
    ['23505', Code.ALREADY_EXISTS],
    ['42P01', Code.UNKNOWN],
  ])('maps the PostgreSQL SQLSTATE %s to %s', (sqlstate, expected) => {
    expect(toRemexError(errno(sqlstate, 'pg says no')).code).toBe(expected);
  });

  it.each([
    'Connection terminated unexpectedly',
    'Cannot use a pool after calling end on the pool',
    'Client has encountered a connection error and is not queryable',
  ])('maps the pg connection error "%s" to UNAVAILABLE', (message) => {
    expect(toRemexError(new Error(message)).code).toBe(Code.UNAVAILABLE);
  });

  it.each([
    [s3('NoSuchKey', 404), Code.NOT_FOUND],
    [s3('NotFound', 404), Code.NOT_FOUND],
    [s3('NoSuchBucket', 404), Code.FAILED_PRECONDITION],
    [s3('SlowDown', 503), Code.UNAVAILABLE],
    [s3('InternalError', 500), Code.UNAVAILABLE],
    [s3('BadGateway', 502), Code.UNAVAILABLE],
    [s3('AccessDenied', 403), Code.PERMISSION_DENIED],
    [s3('InvalidRange', 416), Code.OUT_OF_RANGE],
    [s3('InvalidArgument', 400), Code.UNKNOWN],
  ])('maps the S3 error %s to %s', (err, expected) => {
    expect(toRemexError(err, 's3').code).toBe(expected);
  });

  it('says FAILED_PRECONDITION, not NOT_FOUND, when the bucket itself is missing', () => {
    const mapped = toRemexError(s3('NoSuchBucket', 404), 's3 bucket remex-cas');
    expect(mapped.code).toBe(Code.FAILED_PRECONDITION);
    expect(mapped.message).toBe('s3 bucket remex-cas: NoSuchBucket from S3');
  });

  it.each([
    [named('MaxRetriesPerRequestError', 'Reached the max retries per request limit'), Code.UNAVAILABLE],
    [new Error('Connection is closed.'), Code.UNAVAILABLE],
    [new Error("Stream isn't writeable and enableOfflineQueue options is false"), Code.UNAVAILABLE],
    [new Error('connect ECONNREFUSED 127.0.0.1:6379'), Code.UNAVAILABLE],
    [new Error('Command timed out'), Code.UNAVAILABLE],
    [named('ReplyError', 'LOADING Redis is loading the dataset in memory'), Code.UNAVAILABLE],
    [named('ReplyError', 'READONLY You cannot write against a read only replica.'), Code.UNAVAILABLE],
    [named('ReplyError', "OOM command not allowed when used memory > 'maxmemory'."), Code.RESOURCE_EXHAUSTED],
    [named('ReplyError', 'WRONGTYPE Operation against a key holding the wrong kind of value'), Code.UNKNOWN],
  ])('maps the Redis error %s to %s', (err, expected) => {
    expect(toRemexError(err).code).toBe(expected);
  });

  it('maps an abort to CANCELLED, whichever way it is spelled', () => {
    const dom = new DOMException('This operation was aborted', 'AbortError');
    const node = errno('ABORT_ERR', 'The operation was aborted');
    expect(isAbortError(dom)).toBe(true);
    expect(isAbortError(node)).toBe(true);
    expect(toRemexError(dom, 'disk')).toMatchObject({
      code: Code.CANCELLED,
      message: 'disk: operation cancelled',
    });
    expect(toRemexError(node).code).toBe(Code.CANCELLED);
    expect(isAbortError(new Error('aborted'))).toBe(false);
  });

  it('leaves anything else UNKNOWN, keeping the cause, also for thrown non-errors', () => {
    const err = new TypeError('x is not a function');
    expect(toRemexError(err, 'cas')).toMatchObject({
      code: Code.UNKNOWN,
      message: 'cas: x is not a function',
      cause: err,
    });
    expect(toRemexError('a string')).toMatchObject({ code: Code.UNKNOWN, message: 'a string' });
    expect(toRemexError(undefined).code).toBe(Code.UNKNOWN);
  });
});
