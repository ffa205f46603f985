import type { Deadline, Metadata } from '@grpc/grpc-js';
import { setMaxListeners } from 'node:events';
import { RequestMetadata } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { setLongTimeout } from '../common/timers.js';

/** What a domain call needs to know about the RPC that caused it. */
export interface CallContext {
  /** Aborted when the client cancels or the deadline passes. */
  signal: AbortSignal;
  /** REAPI RequestMetadata header sent by Bazel and recc, when present. */
  requestMetadata?: RequestMetadata;
  peer: string;
  /** Absolute deadline (ms since epoch), when the client set one. */
  deadline?: number;
}

const REQUEST_METADATA_KEY = 'build.bazel.remote.execution.v2.requestmetadata-bin';

export function requestMetadataOf(metadata: Metadata): RequestMetadata | undefined {
  const raw = metadata.get(REQUEST_METADATA_KEY)[0];
  if (!raw || typeof raw === 'string') return undefined;
  try {
    return RequestMetadata.decode(raw);
  } catch {
    return undefined;
  }
}

interface AnyCall {
  readonly metadata: Metadata;
  getDeadline(): Deadline;
  getPeer(): string;
  once(event: 'cancelled', listener: () => void): unknown;
}

export function callContext(call: AnyCall): CallContext {
  const controller = new AbortController();
  const abort = () => controller.abort();
  call.once('cancelled', abort);
  // One signal serves every store call of a request (a batch fans out to many).
  setMaxListeners(0, controller.signal);
  // grpc-js gives the deadline as an absolute time (a Date or epoch ms; Infinity when none).
  const deadline = call.getDeadline();
  const ms = (deadline instanceof Date ? deadline.getTime() : Number(deadline)) - Date.now();
  if (ms < Infinity) {
    const timer = setLongTimeout(abort, ms, { unref: true });
    controller.signal.addEventListener('abort', () => timer.clear(), { once: true });
  }
  return {
    signal: controller.signal,
    requestMetadata: requestMetadataOf(call.metadata),
    peer: call.getPeer(),
  };
}
