import { actionCacheService } from '../actioncache/action-cache-service.js';
import { fetchService, pushService } from '../asset/asset-service.js';
import { botsService } from '../bots/bots-service.js';
import { capabilitiesService } from '../capabilities/capabilities-service.js';
import { byteStreamService } from '../cas/bytestream-service.js';
import { casService } from '../cas/cas-service.js';
import type { Instances } from '../common/instances.js';
import type { Config } from '../config/config.js';
import type { Execution } from '../execution/execution.js';
import { executionService } from '../execution/execution-service.js';
import { operationsService } from '../execution/operations-service.js';
import { FetchService, PushService } from '../gen/build/bazel/remote/asset/v1/remote_asset.js';
import {
  ActionCacheService,
  CapabilitiesService,
  ContentAddressableStorageService,
  ExecutionService,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamService } from '../gen/google/bytestream/bytestream.js';
import { BotsService } from '../gen/google/devtools/remoteworkers/v1test2/bots.js';
import { OperationsService } from '../gen/google/longrunning/operations.js';
import type { ServiceEntry } from '../server/grpc-server.js';
import type { Storage } from './storage.js';

/** What the services of a process are built on; absent parts are roles it does not serve. */
export interface ServiceParts {
  instances: Instances;
  storage: Storage;
  serveActionCache: boolean;
  execution?: Execution;
}

/** The gRPC services for the process's roles: Capabilities always, the rest by role. */
export function servicesFor(
  config: Config,
  parts: ServiceParts,
): { all: ServiceEntry[]; execution: ServiceEntry[] } {
  const { instances, storage, execution } = parts;
  const exec = config.execution;
  const all: ServiceEntry[] = [
    {
      name: 'build.bazel.remote.execution.v2.Capabilities',
      definition: CapabilitiesService,
      implementation: capabilitiesService(instances, {
        maxBatchTotalSizeBytes: config.maxBatchTotalSizeBytes,
        actionCacheUpdates: config.actionCacheUpdates,
        cache: true,
        execution: exec.enabled
          ? { minPriority: exec.minPriority, maxPriority: exec.maxPriority }
          : undefined,
      }),
    },
  ];
  const { uploads, assets, actionCache } = storage;
  if (uploads && assets) {
    all.push(
      {
        name: 'build.bazel.remote.execution.v2.ContentAddressableStorage',
        definition: ContentAddressableStorageService,
        implementation: casService(storage.cas, instances),
      },
      {
        name: 'google.bytestream.ByteStream',
        definition: ByteStreamService,
        implementation: byteStreamService(storage.cas, uploads, instances),
      },
      {
        name: 'build.bazel.remote.asset.v1.Fetch',
        definition: FetchService,
        implementation: fetchService(assets, instances),
      },
      {
        name: 'build.bazel.remote.asset.v1.Push',
        definition: PushService,
        implementation: pushService(assets, instances),
      },
    );
  }
  if (parts.serveActionCache && actionCache) {
    all.push({
      name: 'build.bazel.remote.execution.v2.ActionCache',
      definition: ActionCacheService,
      implementation: actionCacheService(actionCache, instances),
    });
  }
  // Execution, Operations and Bots: NOT_SERVING while the scheduler's store is unreachable.
  const executionServices: ServiceEntry[] = execution
    ? [
        {
          name: 'build.bazel.remote.execution.v2.Execution',
          definition: ExecutionService,
          implementation: executionService(execution, instances),
        },
        {
          name: 'google.longrunning.Operations',
          definition: OperationsService,
          implementation: operationsService(execution),
        },
        {
          name: 'google.devtools.remoteworkers.v1test2.Bots',
          definition: BotsService,
          implementation: botsService(execution.scheduler, instances, { pollMs: exec.botPoll }),
        },
      ]
    : [];
  return { all: [...all, ...executionServices], execution: executionServices };
}
