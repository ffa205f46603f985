import type {
  handleClientStreamingCall,
  handleServerStreamingCall,
  handleUnaryCall,
  sendUnaryData,
  ServerReadableStream,
  ServerUnaryCall,
  ServerWritableStream,
} from '@grpc/grpc-js';
import { once } from 'node:events';
import { callContext, type CallContext } from './call-context.js';
import { toServiceError } from './errors.js';

/** Adapts an async function to a grpc-js unary handler, mapping any thrown error to a status. */
export function unary<Req, Res>(
  method: string,
  fn: (req: Req, ctx: CallContext) => Promise<Res>,
): handleUnaryCall<Req, Res> {
  return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>) => {
    fn(call.request, callContext(call)).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toServiceError(err, method)),
    );
  };
}

/** A writer that respects backpressure: resolves once the message is buffered. */
export type Send<Res> = (message: Res) => Promise<void>;

export function serverStreaming<Req, Res>(
  method: string,
  fn: (req: Req, send: Send<Res>, ctx: CallContext) => Promise<void>,
): handleServerStreamingCall<Req, Res> {
  return (call: ServerWritableStream<Req, Res>) => {
    const ctx = callContext(call);
    const send: Send<Res> = async (message) => {
      ctx.signal.throwIfAborted();
      if (!call.write(message)) {
        await Promise.race([once(call, 'drain'), once(ctx.signal, 'abort')]);
        ctx.signal.throwIfAborted();
      }
    };
    fn(call.request, send, ctx).then(
      () => call.end(),
      (err: unknown) => {
        // grpc-js turns an 'error' event into the call's final status (destroy() would not send one).
        if (!ctx.signal.aborted) call.emit('error', toServiceError(err, method));
      },
    );
  };
}

export function clientStreaming<Req, Res>(
  method: string,
  fn: (requests: AsyncIterable<Req>, ctx: CallContext) => Promise<Res>,
): handleClientStreamingCall<Req, Res> {
  return (call: ServerReadableStream<Req, Res>, callback: sendUnaryData<Res>) => {
    const ctx = callContext(call);
    fn(call as AsyncIterable<Req>, ctx).then(
      (res) => callback(null, res),
      (err: unknown) => callback(toServiceError(err, method)),
    );
  };
}
