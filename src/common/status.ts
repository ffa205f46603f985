/**
 * Status codes as defined by google.rpc.Code (same numbers as gRPC status codes).
 * Domain modules throw RemexError with one of these; only the server edge
 * (src/server/errors.ts) turns them into grpc-js ServiceErrors.
 */
export enum Code {
  OK = 0,
  CANCELLED = 1,
  UNKNOWN = 2,
  INVALID_ARGUMENT = 3,
  DEADLINE_EXCEEDED = 4,
  NOT_FOUND = 5,
  ALREADY_EXISTS = 6,
  PERMISSION_DENIED = 7,
  RESOURCE_EXHAUSTED = 8,
  FAILED_PRECONDITION = 9,
  ABORTED = 10,
  OUT_OF_RANGE = 11,
  UNIMPLEMENTED = 12,
  INTERNAL = 13,
  UNAVAILABLE = 14,
  DATA_LOSS = 15,
  UNAUTHENTICATED = 16,
}

/** A google.rpc.Status detail, already encoded as a google.protobuf.Any. */
export interface StatusDetail {
  typeUrl: string;
  value: Buffer;
}

/** The one error type of remex: a message for the client plus the status code to send. */
export class RemexError extends Error {
  /** Machine-readable details sent with the status (e.g. a PreconditionFailure). */
  readonly details: StatusDetail[];

  constructor(
    readonly code: Code,
    message: string,
    options?: { cause?: unknown; details?: StatusDetail[] },
  ) {
    super(message, options);
    this.name = 'RemexError';
    this.details = options?.details ?? [];
  }

  /** A copy whose message is prefixed, e.g. with the name of the store that failed. */
  prefixed(prefix: string): RemexError {
    return new RemexError(this.code, `${prefix}: ${this.message}`, {
      cause: this.cause,
      details: this.details,
    });
  }
}

export const invalidArgument = (message: string) => new RemexError(Code.INVALID_ARGUMENT, message);
export const notFound = (message: string) => new RemexError(Code.NOT_FOUND, message);
export const failedPrecondition = (message: string) => new RemexError(Code.FAILED_PRECONDITION, message);
export const outOfRange = (message: string) => new RemexError(Code.OUT_OF_RANGE, message);
export const resourceExhausted = (message: string) => new RemexError(Code.RESOURCE_EXHAUSTED, message);
export const unimplemented = (message: string) => new RemexError(Code.UNIMPLEMENTED, message);
export const aborted = (message: string) => new RemexError(Code.ABORTED, message);
