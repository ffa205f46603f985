import { credentials, type ChannelOptions } from '@grpc/grpc-js';
import {
  ActionCacheClient,
  CapabilitiesClient,
  ContentAddressableStorageClient,
  ExecutionClient,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamClient } from '../../src/gen/google/bytestream/bytestream.js';

/**
 * Channel options of every bench client. The HTTP/2 receive window is opened to 16 MiB:
 * grpc-java (Bazel's client) tunes its window up from the bandwidth-delay product, while
 * grpc-js keeps 64 KiB unless told otherwise, which makes a grpc-js reader, not the
 * server, the bottleneck of a large download.
 */
export const BENCH_CHANNEL_OPTIONS: ChannelOptions = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
  'grpc-node.flow_control_window': 16 << 20,
};

/** The clients of one build tool: one channel (connection) shared by its services. */
export function benchClients(address: string, own = false) {
  const c = credentials.createInsecure();
  // A local subchannel pool gives this set of clients its own connection.
  const options = { ...BENCH_CHANNEL_OPTIONS, ...(own ? { 'grpc.use_local_subchannel_pool': 1 } : {}) };
  const capabilities = new CapabilitiesClient(address, c, options);
  // Later clients share the first one's channel, as one tool's stubs share one channel.
  const channel = { channelOverride: capabilities.getChannel() };
  return {
    capabilities,
    cas: new ContentAddressableStorageClient(address, c, { ...options, ...channel }),
    byteStream: new ByteStreamClient(address, c, { ...options, ...channel }),
    actionCache: new ActionCacheClient(address, c, { ...options, ...channel }),
    execution: new ExecutionClient(address, c, { ...options, ...channel }),
    close() {
      for (const client of [this.cas, this.byteStream, this.actionCache, this.execution, this.capabilities]) {
        client.close();
      }
    },
  };
}

export type BenchClients = ReturnType<typeof benchClients>;
