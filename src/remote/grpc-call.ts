import {
  Metadata,
  type CallOptions,
  type Client,
  type ClientWritableStream,
  type ServiceError,
} from '@grpc/grpc-js';
import { Code, RemexError } from '../common/status.js';

/** The parts of a ts-proto generated method definition a call needs. */
export interface MethodDefinition<Req, Res> {
  path: string;
  requestSerialize: (value: Req) => Buffer;
  responseDeserialize: (value: Buffer) => Res;
}

export interface CallLimits {
  /** Cancels the call (it then fails with CANCELLED). */
  signal?: AbortSignal;
  /** gRPC deadline, in milliseconds from now. */
  timeoutMs?: number;
  /** Wait for the channel to (re)connect instead of failing at once with UNAVAILABLE. */
  waitForReady?: boolean;
}

/** Channel options shared by the worker's clients: no message size cap, quick reconnects. */
export const CHANNEL_OPTIONS = {
  'grpc.max_receive_message_length': -1,
  'grpc.max_send_message_length': -1,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 5000,
} as const;

export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'metadata' in err;
}

/** A gRPC failure as a RemexError with the same code, its message prefixed with the method name. */
export function fromServiceError(err: unknown, method: string): RemexError {
  if (err instanceof RemexError) return err;
  if (isServiceError(err)) {
    const name = method.slice(method.lastIndexOf('/') + 1);
    return new RemexError(err.code as number as Code, `${name}: ${err.details || err.message}`, {
      cause: err,
    });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new RemexError(Code.UNKNOWN, `${method}: ${message}`, { cause: err });
}

/** The status code of a RemexError or grpc-js ServiceError; UNKNOWN for anything else. */
export function codeOf(err: unknown): Code {
  if (err instanceof RemexError) return err.code;
  if (isServiceError(err)) return err.code as number as Code;
  return Code.UNKNOWN;
}

function options(limits: CallLimits): Partial<CallOptions> {
  return limits.timeoutMs === undefined ? {} : { deadline: Date.now() + limits.timeoutMs };
}

function metadata(limits: CallLimits): Metadata {
  return new Metadata(limits.waitForReady ? { waitForReady: true } : undefined);
}

function cancelled(method: string): RemexError {
  return new RemexError(Code.CANCELLED, `${method.slice(method.lastIndexOf('/') + 1)}: cancelled`);
}

/** Calls a unary method; errors become RemexErrors carrying the gRPC code. */
export function unaryCall<Req, Res>(
  client: Client,
  method: MethodDefinition<Req, Res>,
  request: Req,
  limits: CallLimits = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const { signal } = limits;
    if (signal?.aborted) return reject(cancelled(method.path));
    const onAbort = () => call.cancel();
    const call = client.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      request,
      metadata(limits),
      options(limits),
      (err, response) => {
        signal?.removeEventListener('abort', onAbort);
        if (err) reject(fromServiceError(err, method.path));
        else resolve(response!);
      },
    );
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Starts a server-streaming call; the stream is cancelled when the signal aborts. */
export function serverStreamCall<Req, Res>(
  client: Client,
  method: MethodDefinition<Req, Res>,
  request: Req,
  limits: CallLimits = {},
) {
  const call = client.makeServerStreamRequest(
    method.path,
    method.requestSerialize,
    method.responseDeserialize,
    request,
    metadata(limits),
    options(limits),
  );
  const { signal } = limits;
  if (signal) {
    const onAbort = () => call.cancel();
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    call.once('close', () => signal.removeEventListener('abort', onAbort));
  }
  return call;
}

/**
 * Starts a client-streaming call. `response` settles with the server's answer (errors as
 * RemexErrors); `settled()` says whether it already has, e.g. when the server answers early.
 */
export function clientStreamCall<Req, Res>(
  client: Client,
  method: MethodDefinition<Req, Res>,
  limits: CallLimits = {},
) {
  let settled = false;
  let call!: ClientWritableStream<Req>;
  const response = new Promise<Res>((resolve, reject) => {
    call = client.makeClientStreamRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      metadata(limits),
      options(limits),
      (err, res) => {
        settled = true;
        if (err) reject(fromServiceError(err, method.path));
        else resolve(res as Res);
      },
    );
  });
  // Callers await `response` eventually; this only keeps an early failure from being unhandled.
  response.catch(() => undefined);
  const { signal } = limits;
  if (signal) {
    const onAbort = () => call.cancel();
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    void response.finally(() => signal.removeEventListener('abort', onAbort)).catch(() => undefined);
  }
  return { call, response, settled: () => settled };
}
