import {
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation } from 'grpc-health-check';
import { readFileSync } from 'node:fs';
import { ActionCache } from '../actioncache/action-cache.js';
import { actionCacheService } from '../actioncache/action-cache-service.js';
import { AssetIndex } from '../asset/asset-index.js';
import { fetchService, pushService } from '../asset/asset-service.js';
import { capabilitiesService } from '../capabilities/capabilities-service.js';
import { byteStreamService } from '../cas/bytestream-service.js';
import { Cas } from '../cas/cas.js';
import { casService } from '../cas/cas-service.js';
import { UploadManager } from '../cas/upload-manager.js';
import { Instances } from '../common/instances.js';
import { resolvePath, type Config, type Role } from '../config/config.js';
import type { Job } from '../execution/scheduler/job.js';
import { PgSchedulerStore } from '../execution/scheduler/pg-scheduler-store.js';
import { ACTION_KIND, ActionResults } from '../execution/action-results.js';
import { createBlobStore, createKeyValueStore, SharedResources } from '../config/factory.js';
import { FetchService, PushService } from '../gen/build/bazel/remote/asset/v1/remote_asset.js';
import {
  ActionCacheService,
  CapabilitiesService,
  ContentAddressableStorageService,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamService } from '../gen/google/bytestream/bytestream.js';
import { log } from './log.js';
import { startMetricsEndpoint } from './metrics-endpoint.js';
import { startWorker } from '../../workers/bot/worker.js';
import { parseProperty } from '../../workers/bot/worker-properties.js';
import { randomUUID } from 'node:crypto';
import { Execution } from '../execution/execution.js';
import { executionService } from '../execution/execution-service.js';
import { operationsService } from '../execution/operations-service.js';
import { Scheduler } from '../execution/scheduler/scheduler.js';
import { propertyTypes } from '../execution/platform.js';
import { MemorySchedulerStore } from '../execution/scheduler/memory-scheduler-store.js';
import { botsService } from '../bots/bots-service.js';
import { ExecutionService } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { OperationsService } from '../gen/google/longrunning/operations.js';
import { BotsService } from '../gen/google/devtools/remoteworkers/v1test2/bots.js';

export interface RunningServer {
  /** The address actually bound (with the real port when 0 was asked for). */
  address: string;
  port: number;
  /** Graceful stop: refuses new calls, lets running ones finish for up to graceMs, then cuts them. */
  close(graceMs?: number): Promise<void>;
}

const EXECUTION_SERVICES = new Set([
  'build.bazel.remote.execution.v2.Execution',
  'google.longrunning.Operations',
  'google.devtools.remoteworkers.v1test2.Bots',
]);

/** Longest a finished action's result may take to reach the action cache. */
const ACTION_CACHE_WRITE_TIMEOUT_MS = 20_000;

// Headroom over the batch limit for the rest of the message (digests, framing).
const MESSAGE_OVERHEAD = 1 << 20;

/** Starts the services the config asks for on one gRPC server. */
export async function startServer(config: Config): Promise<RunningServer> {
  const instances = new Instances(config.instanceNames);
  const roles = new Set<Role>(config.services);
  const exec = config.execution;
  const serveExecution = roles.has('execution') && exec.enabled;
  // Every role reads the CAS (the action cache checks outputs, execution loads actions);
  // in a split deployment each role points at the same shared backends.
  const shared = new SharedResources();
  const casStore = await createBlobStore(config.cas, config, 'cas', shared);
  const cas = new Cas(casStore, { maxBatchTotalSizeBytes: config.maxBatchTotalSizeBytes });
  const acStore =
    roles.has('actioncache') || serveExecution
      ? await createKeyValueStore(config.actionCache, config, 'action-cache')
      : undefined;
  const actionCache = acStore
    ? new ActionCache(acStore, cas, {
        allowUpdates: config.actionCacheUpdates,
        maxInlineBytes: config.maxInlineBytes,
      })
    : undefined;
  const uploads = roles.has('cas')
    ? await UploadManager.create(cas, {
        spoolDir: resolvePath(config, config.uploads.path),
        idleTimeoutMs: config.uploads.idleTimeout,
      })
    : undefined;
  const assetStore = roles.has('cas')
    ? await createKeyValueStore(config.assets, config, 'assets')
    : undefined;
  const assets = assetStore ? new AssetIndex(assetStore, cas) : undefined;
  const actionResults = actionCache
    ? new ActionResults(actionCache, {
        writeTimeoutMs: ACTION_CACHE_WRITE_TIMEOUT_MS,
        onWriteError: (job: Job, err: unknown) =>
          log.error({ err, operation: job.name }, 'could not store the action result'),
      })
    : undefined;
  const scheduler =
    serveExecution && actionResults ? await createScheduler(config, actionResults) : undefined;
  let sweeping = false;
  // The sweep reaches the scheduler's database every second: it doubles as the health
  // probe of the execution services (NOT_SERVING while the database is unreachable).
  let schedulerHealthy = true;
  let stopping = false;
  let reportSchedulerHealth = (_ok: boolean) => {};
  const sweeper = setInterval(() => {
    if (!scheduler || sweeping) return;
    sweeping = true;
    // Through then(): the in-memory sweep is synchronous and must not throw out of the timer.
    Promise.resolve()
      .then(() => scheduler.sweep())
      .then(
        () => {
          if (!schedulerHealthy) log.info('scheduler reachable again; execution services SERVING');
          schedulerHealthy = true;
        },
        (err: unknown) => {
          if (schedulerHealthy) log.warn({ err }, 'scheduler sweep failed; execution services NOT_SERVING');
          schedulerHealthy = false;
        },
      )
      .finally(() => {
        sweeping = false;
        reportSchedulerHealth(schedulerHealthy);
      });
  }, 1000);
  sweeper.unref();
  const execution =
    scheduler && actionResults
      ? new Execution(scheduler, cas, actionResults, {
          minPriority: exec.minPriority,
          maxPriority: exec.maxPriority,
          keepaliveMs: exec.keepalive,
        })
      : undefined;

  const server = new Server({
    'grpc.max_receive_message_length': config.maxBatchTotalSizeBytes + MESSAGE_OVERHEAD,
    'grpc.max_send_message_length': config.maxBatchTotalSizeBytes + MESSAGE_OVERHEAD,
    // Clients such as Bazel ping idle connections; accept that instead of answering GOAWAY.
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
    'grpc.keepalive_permit_without_calls': 1,
  });
  const services: [string, ServiceDefinition, UntypedServiceImplementation][] = [
    [
      'build.bazel.remote.execution.v2.Capabilities',
      CapabilitiesService,
      capabilitiesService(instances, {
        maxBatchTotalSizeBytes: config.maxBatchTotalSizeBytes,
        actionCacheUpdates: config.actionCacheUpdates,
        cache: true,
        execution: exec.enabled
          ? { minPriority: exec.minPriority, maxPriority: exec.maxPriority }
          : undefined,
      }),
    ],
  ];
  if (uploads && assets) {
    services.push(
      [
        'build.bazel.remote.execution.v2.ContentAddressableStorage',
        ContentAddressableStorageService,
        casService(cas, instances),
      ],
      ['google.bytestream.ByteStream', ByteStreamService, byteStreamService(cas, uploads, instances)],
      ['build.bazel.remote.asset.v1.Fetch', FetchService, fetchService(assets, instances)],
      ['build.bazel.remote.asset.v1.Push', PushService, pushService(assets, instances)],
    );
  }
  if (roles.has('actioncache') && actionCache) {
    services.push([
      'build.bazel.remote.execution.v2.ActionCache',
      ActionCacheService,
      actionCacheService(actionCache, instances),
    ]);
  }
  if (execution && scheduler) {
    services.push(
      ['build.bazel.remote.execution.v2.Execution', ExecutionService, executionService(execution, instances)],
      ['google.longrunning.Operations', OperationsService, operationsService(execution)],
      [
        'google.devtools.remoteworkers.v1test2.Bots',
        BotsService,
        botsService(scheduler, instances, { pollMs: exec.botPoll }),
      ],
    );
  }
  for (const [, definition, impl] of services) server.addService(definition, impl);

  const health = new HealthImplementation({
    '': 'SERVING',
    ...Object.fromEntries(services.map(([name]) => [name, 'SERVING' as const])),
  });
  health.addToServer(server);
  const executionServices = services.map(([name]) => name).filter((n) => EXECUTION_SERVICES.has(n));
  reportSchedulerHealth = (ok) => {
    if (stopping) return;
    for (const name of executionServices) health.setStatus(name, ok ? 'SERVING' : 'NOT_SERVING');
  };
  addReflection(
    server,
    services.map(([name]) => name),
  );

  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(config.listen, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const host = config.listen.slice(0, config.listen.lastIndexOf(':'));
  const address = `${host}:${port}`;
  const metrics = config.metrics.listen ? await startMetricsEndpoint(config.metrics.listen) : undefined;
  log.info(
    {
      address,
      roles: config.services,
      instances: config.instanceNames,
      cas: config.cas.type,
      scheduler: scheduler ? exec.scheduler.type : undefined,
      services: services.map(([n]) => n),
      metrics: metrics?.address,
    },
    'remex serving',
  );

  // The embedded default: local workers in this process, reaching the server over loopback
  // through the same Bots and CAS services a remote worker uses.
  // Bot sessions belong to one instance, so each instance name gets its own slots.
  // They need Bots and the CAS from this process; a split role runs none.
  const localWorkers =
    serveExecution && roles.has('cas') && config.workers.count > 0
      ? await Promise.all(
          config.instanceNames.map((instanceName, i) =>
            startWorker({
              server: address.startsWith('0.0.0.0:') ? `127.0.0.1:${port}` : address,
              instanceName,
              capacity: config.workers.count,
              properties: config.workers.properties.map(parseProperty),
              workDir: resolvePath(config, config.workers.workDir),
              runnerNames: config.workers.runners,
              defaultRunner: config.workers.defaultRunner,
              allowNetwork: config.workers.allowNetwork,
              name: `local${i}`,
            }),
          ),
        )
      : [];
  if (localWorkers.length > 0)
    log.info(
      { slots: config.workers.count, instances: config.instanceNames.length },
      'local workers started',
    );

  let closed: Promise<void> | undefined;
  return {
    address,
    port,
    close(graceMs = config.shutdownGrace) {
      stopping = true;
      closed ??= (async () => {
        await Promise.all(localWorkers.map((w) => w.stop()));
        // Refuse new work, answer held bot polls, let running calls finish (they still
        // reach the scheduler's database), and only then release the storage.
        for (const [name] of services) health.setStatus(name, 'NOT_SERVING');
        health.setStatus('', 'NOT_SERVING');
        scheduler?.drain();
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => {
            server.forceShutdown();
            resolve();
          }, graceMs);
          server.tryShutdown(() => {
            clearTimeout(timer);
            resolve();
          });
        });
        clearInterval(sweeper);
        await scheduler?.close();
        await metrics?.close();
        await uploads?.close();
        await Promise.all([casStore.close?.(), acStore?.close?.(), assetStore?.close?.()]);
        await shared.close();
        log.info({ address }, 'remex stopped');
      })();
      return closed;
    },
  };
}

/** The scheduler over its store: in memory (one process) or PostgreSQL (shared by replicas). */
async function createScheduler(config: Config, actionResults: ActionResults): Promise<Scheduler> {
  const exec = config.execution;
  const store =
    exec.scheduler.type === 'postgres'
      ? await PgSchedulerStore.open({ url: exec.scheduler.url, poolSize: exec.scheduler.poolSize })
      : new MemorySchedulerStore();
  return new Scheduler({
    store,
    now: Date.now,
    newId: randomUUID,
    botSessionTimeoutMs: exec.botSessionTimeout,
    maxAttempts: exec.maxAttempts,
    unschedulableTimeoutMs: exec.unschedulableTimeout,
    completedRetentionMs: exec.completedRetention,
    propertyTypes: propertyTypes(exec.propertyTypes),
    settle: { [ACTION_KIND]: actionResults.settle },
    onRequeue: (job: Job, why: string) =>
      log.warn({ operation: job.name, attempt: job.attempts, why }, 'action lost its worker; queued again'),
    onError: (job: Job, err: unknown) => log.error({ err, operation: job.name }, 'completing the job failed'),
  });
}

/**
 * Server reflection (v1 and v1alpha), for grpcurl. It is given the generated file
 * descriptors as they are, one per .proto file with its imports, so that clients can
 * resolve every type file by file (a package definition rebuilt by proto-loader would
 * merge files per package and drop the imports, which grpcurl cannot use).
 */
function addReflection(server: Server, serviceNames: string[]): void {
  const files = fileDescriptorProtos(readFileSync(new URL('../gen/descriptors.binpb', import.meta.url)));
  const definition = { remex: { format: '', type: {}, fileDescriptorProtos: files } };
  new ReflectionService(definition as never, {
    services: [...serviceNames, 'grpc.health.v1.Health'],
  }).addToServer(server);
}

/** The serialized FileDescriptorProtos of a FileDescriptorSet (field 1, repeated bytes), unchanged. */
export function fileDescriptorProtos(set: Buffer): Buffer[] {
  const files: Buffer[] = [];
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = set[pos++];
      if (byte === undefined) throw new Error('truncated FileDescriptorSet');
      result += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return result;
      shift += 7;
    }
  };
  while (pos < set.length) {
    const tag = varint();
    if (tag !== 0x0a) throw new Error(`unexpected field tag ${tag} in FileDescriptorSet`);
    const length = varint();
    files.push(set.subarray(pos, pos + length));
    pos += length;
  }
  return files;
}
