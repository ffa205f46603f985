import { status } from '@grpc/grpc-js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { log } from '../common/log.js';
import { Code, RemexError } from '../common/status.js';
import { PreconditionFailure } from '../gen/google/rpc/error_details.js';
import { Status } from '../gen/google/rpc/status.js';
import { toServiceError } from './errors.js';

describe('toServiceError', () => {
  afterEach(() => vi.restoreAllMocks());

  it('keeps the code and message of a RemexError, and logs a rejection at debug only', () => {
    const debug = vi.spyOn(log, 'debug').mockImplementation(() => undefined);
    const error = vi.spyOn(log, 'error').mockImplementation(() => undefined);
    const e = toServiceError(
      new RemexError(Code.INVALID_ARGUMENT, 'digest has invalid hash'),
      'CAS/FindMissing',
    );
    expect(e.code).toBe(status.INVALID_ARGUMENT);
    expect(e.details).toBe('digest has invalid hash');
    expect(e.message).toBe('digest has invalid hash');
    expect(e.metadata.get('grpc-status-details-bin')).toEqual([]);
    expect(debug).toHaveBeenCalledOnce();
    expect(error).not.toHaveBeenCalled();
  });

  it('maps a storage error through the one mapping (ENOSPC is RESOURCE_EXHAUSTED)', () => {
    vi.spyOn(log, 'debug').mockImplementation(() => undefined);
    const enospc = Object.assign(new Error('ENOSPC: no space left on device'), { code: 'ENOSPC' });
    const e = toServiceError(enospc, 'ByteStream/Write');
    expect(e.code).toBe(status.RESOURCE_EXHAUSTED);
    expect(e.details).toContain('no space left');
  });

  it('hides an unexpected error behind a generic message naming the method, and logs its details', () => {
    const error = vi.spyOn(log, 'error').mockImplementation(() => undefined);
    const bug = new TypeError("Cannot read properties of undefined (reading 'secret-token-123')");
    const e = toServiceError(bug, 'Execution/Execute');
    expect(e.code).toBe(status.UNKNOWN);
    expect(e.details).toBe('internal error in Execution/Execute (details are in the server log)');
    expect(e.details).not.toContain('secret-token-123');
    expect(error).toHaveBeenCalledOnce();
    expect(error.mock.calls[0]![0]).toMatchObject({ err: bug, method: 'Execution/Execute' });
  });

  it('passes the message of an UNKNOWN RemexError, which remex wrote for the client', () => {
    vi.spyOn(log, 'error').mockImplementation(() => undefined);
    const e = toServiceError(new RemexError(Code.UNKNOWN, 'the worker reported no status'), 'Bots/Update');
    expect(e.code).toBe(status.UNKNOWN);
    expect(e.details).toBe('the worker reported no status');
  });

  it.each([Code.INTERNAL, Code.DATA_LOSS])('logs %s as an error', (code) => {
    const error = vi.spyOn(log, 'error').mockImplementation(() => undefined);
    const e = toServiceError(new RemexError(code, 'checksum mismatch on disk'), 'CAS/BatchRead');
    expect(e.code).toBe(code as number);
    expect(error).toHaveBeenCalledOnce();
  });

  it('sends details as a google.rpc.Status in grpc-status-details-bin', () => {
    vi.spyOn(log, 'debug').mockImplementation(() => undefined);
    const failure = PreconditionFailure.encode({
      violations: [{ type: 'MISSING', subject: 'blobs/abc/3', description: 'not in the CAS' }],
    }).finish();
    const details = [
      { typeUrl: 'type.googleapis.com/google.rpc.PreconditionFailure', value: Buffer.from(failure) },
    ];
    const e = toServiceError(
      new RemexError(Code.FAILED_PRECONDITION, 'action abc/3 is not in the CAS', { details }),
      'Execution/Execute',
    );
    expect(e.code).toBe(status.FAILED_PRECONDITION);
    const [raw] = e.metadata.get('grpc-status-details-bin') as Buffer[];
    const rich = Status.decode(raw!);
    expect(rich.code).toBe(Code.FAILED_PRECONDITION);
    expect(rich.message).toBe('action abc/3 is not in the CAS');
    expect(PreconditionFailure.decode(rich.details[0]!.value).violations[0]).toMatchObject({
      type: 'MISSING',
      subject: 'blobs/abc/3',
    });
  });
});
