import type { Client, ClientReadableStream } from '@grpc/grpc-js';
import {
  Action,
  Command,
  ContentAddressableStorageService,
  ExecuteOperationMetadata,
  ExecuteResponse,
  ExecuteRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Operation } from '../../src/gen/google/longrunning/operations.js';
import { digestOf } from './blobs.js';
import { unaryCall, type Clients, type DeepPartial } from './clients.js';

/** Uploads a Command and Action with an empty input root; returns the action digest. */
export async function uploadAction(
  c: Clients,
  args: string[],
  extra: { action?: DeepPartial<Action>; command?: DeepPartial<Command> } = {},
) {
  const empty = Buffer.alloc(0);
  const command = Buffer.from(
    Command.encode(Command.fromPartial({ arguments: args, ...extra.command })).finish(),
  );
  const action = Buffer.from(
    Action.encode(
      Action.fromPartial({
        commandDigest: digestOf(command),
        inputRootDigest: digestOf(empty),
        ...extra.action,
      }),
    ).finish(),
  );
  await unaryCall(c.cas as Client as never, ContentAddressableStorageService.batchUpdateBlobs, {
    instanceName: '',
    digestFunction: 0,
    requests: [command, action].map((data) => ({ digest: digestOf(data), data, compressor: 0 })),
  });
  return { actionDigest: digestOf(action), action, command };
}

export interface OperationUpdate {
  name: string;
  done: boolean;
  stage: number;
  response?: ExecuteResponse;
}

export function decodeOperation(op: Operation): OperationUpdate {
  const meta = op.metadata ? ExecuteOperationMetadata.decode(op.metadata.value) : undefined;
  return {
    name: op.name,
    done: op.done,
    stage: meta?.stage ?? 0,
    response: op.response ? ExecuteResponse.decode(op.response.value) : undefined,
  };
}

/** Collects a stream of operations until it ends (or fails). */
export function collect(stream: ClientReadableStream<Operation>, onUpdate?: (u: OperationUpdate) => void) {
  const updates: OperationUpdate[] = [];
  const done = new Promise<OperationUpdate[]>((resolve, reject) => {
    stream.on('data', (op: Operation) => {
      const u = decodeOperation(op);
      updates.push(u);
      onUpdate?.(u);
    });
    stream.on('end', () => resolve(updates));
    stream.on('error', reject);
  });
  return { updates, done };
}

export function executeRequest(req: DeepPartial<ExecuteRequest>): ExecuteRequest {
  return ExecuteRequest.fromPartial(req);
}
