import { credentials } from '@grpc/grpc-js';
import {
  ActionCacheClient,
  CapabilitiesClient,
  ContentAddressableStorageClient,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamClient } from '../../src/gen/google/bytestream/bytestream.js';
import { FetchClient, PushClient } from '../../src/gen/build/bazel/remote/asset/v1/remote_asset.js';

const OPTIONS = { 'grpc.max_receive_message_length': 64 << 20, 'grpc.max_send_message_length': 64 << 20 };

/** Generated gRPC clients for every remex service at one address. */
export function clientsFor(address: string) {
  const c = credentials.createInsecure();
  return {
    capabilities: new CapabilitiesClient(address, c, OPTIONS),
    cas: new ContentAddressableStorageClient(address, c, OPTIONS),
    byteStream: new ByteStreamClient(address, c, OPTIONS),
    actionCache: new ActionCacheClient(address, c, OPTIONS),
    fetch: new FetchClient(address, c, OPTIONS),
    push: new PushClient(address, c, OPTIONS),
    close() {
      for (const client of [
        this.capabilities,
        this.cas,
        this.byteStream,
        this.actionCache,
        this.fetch,
        this.push,
      ])
        client.close();
    },
  };
}

export type Clients = ReturnType<typeof clientsFor>;

/** Promisifies a unary client method, keeping its error (a ServiceError with code and details). */
export function call<Req, Res>(
  fn: (req: Req, cb: (err: Error | null, res: Res) => void) => unknown,
  self: object,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    fn.call(self, req, (err, res) => (err ? reject(err) : resolve(res))),
  );
}

export type DeepPartial<T> = T extends Buffer
  ? T
  : T extends (infer U)[]
    ? DeepPartial<U>[]
    : T extends object
      ? { [K in keyof T]?: DeepPartial<T[K]> }
      : T;

interface UnaryDefinition<Req, Res> {
  path: string;
  requestSerialize: (value: Req) => Buffer;
  responseDeserialize: (value: Buffer) => Res;
}

/** Calls a unary method by its generated definition: typed request and response, no overloads. */
export function unaryCall<Req, Res>(
  client: import('@grpc/grpc-js').Client,
  method: UnaryDefinition<Req, Res>,
  req: Req,
): Promise<Res> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(
      method.path,
      method.requestSerialize,
      method.responseDeserialize,
      req,
      (err, res) => (err ? reject(err) : resolve(res!)),
    ),
  );
}

import { ExecutionClient } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { OperationsClient } from '../../src/gen/google/longrunning/operations.js';
import { BotsClient } from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';

/** Clients for the execution side: Execution, Operations and Bots. */
export function executionClientsFor(address: string) {
  const c = credentials.createInsecure();
  return {
    execution: new ExecutionClient(address, c, OPTIONS),
    operations: new OperationsClient(address, c, OPTIONS),
    bots: new BotsClient(address, c, OPTIONS),
    close() {
      this.execution.close();
      this.operations.close();
      this.bots.close();
    },
  };
}
