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
import { resolvePath, type Config } from '../config/config.js';
import { createBlobStore, createKeyValueStore } from '../config/factory.js';
import { FetchService, PushService } from '../gen/build/bazel/remote/asset/v1/remote_asset.js';
import {
  ActionCacheService,
  CapabilitiesService,
  ContentAddressableStorageService,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ByteStreamService } from '../gen/google/bytestream/bytestream.js';
import { log } from './log.js';
import { startWorker } from '../../workers/worker.js';
import { parseProperty } from '../../workers/worker-properties.js';
import { randomUUID } from 'node:crypto';
import { Execution } from '../execution/execution.js';
import { executionService } from '../execution/execution-service.js';
import { operationsService } from '../execution/operations-service.js';
import { Scheduler } from '../execution/scheduler.js';
import { propertyTypes } from '../execution/platform.js';
import { MemorySchedulerStore } from '../execution/scheduler-store.js';
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

// Headroom over the batch limit for the rest of the message (digests, framing).
const MESSAGE_OVERHEAD = 1 << 20;

/** Starts the services the config asks for on one gRPC server. */
export async function startServer(config: Config): Promise<RunningServer> {
  const instances = new Instances(config.instanceNames);
  const casStore = await createBlobStore(config.cas, config, 'cas');
  const cas = new Cas(casStore, { maxBatchTotalSizeBytes: config.maxBatchTotalSizeBytes });
  const uploads = await UploadManager.create(cas, {
    spoolDir: resolvePath(config, config.uploads.path),
    idleTimeoutMs: config.uploads.idleTimeout,
  });
  const acStore = await createKeyValueStore(config.actionCache, config, 'action-cache');
  const actionCache = new ActionCache(acStore, cas, {
    allowUpdates: config.actionCacheUpdates,
    maxInlineBytes: config.maxInlineBytes,
  });
  const assets = new AssetIndex(await createKeyValueStore(config.assets, config, 'assets'), cas);
  const exec = config.execution;
  const scheduler = new Scheduler({
    now: Date.now,
    newId: randomUUID,
    store: new MemorySchedulerStore(),
    botSessionTimeoutMs: exec.botSessionTimeout,
    maxAttempts: exec.maxAttempts,
    unschedulableTimeoutMs: exec.unschedulableTimeout,
    completedRetentionMs: exec.completedRetention,
    propertyTypes: propertyTypes(exec.propertyTypes),
    onSuccess: (job, result) => actionCache.record(job.instance, job.fn, job.actionDigest, result, {}),
    onRequeue: (job, why) =>
      log.warn({ operation: job.name, attempt: job.attempts, why }, 'action lost its worker; queued again'),
    onError: (job, err) => log.error({ err, operation: job.name }, 'could not store the action result'),
  });
  const sweeper = setInterval(() => scheduler.sweep(), 1000);
  sweeper.unref();
  const execution = new Execution(scheduler, cas, actionCache, {
    minPriority: exec.minPriority,
    maxPriority: exec.maxPriority,
    keepaliveMs: exec.keepalive,
  });

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
    [
      'build.bazel.remote.execution.v2.ContentAddressableStorage',
      ContentAddressableStorageService,
      casService(cas, instances),
    ],
    ['google.bytestream.ByteStream', ByteStreamService, byteStreamService(cas, uploads, instances)],
    [
      'build.bazel.remote.execution.v2.ActionCache',
      ActionCacheService,
      actionCacheService(actionCache, instances),
    ],
    ['build.bazel.remote.asset.v1.Fetch', FetchService, fetchService(assets, instances)],
    ['build.bazel.remote.asset.v1.Push', PushService, pushService(assets, instances)],
  ];
  if (exec.enabled) {
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
  log.info(
    { address, instances: config.instanceNames, cas: config.cas.type, services: services.map(([n]) => n) },
    'remex serving',
  );

  // The embedded default: local workers in this process, reaching the server over loopback
  // through the same Bots and CAS services a remote worker uses.
  // Bot sessions belong to one instance, so each instance name gets its own slots.
  const localWorkers =
    exec.enabled && config.workers.count > 0
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
      closed ??= (async () => {
        await Promise.all(localWorkers.map((w) => w.stop()));
        scheduler.close();
        for (const [name] of services) health.setStatus(name, 'NOT_SERVING');
        health.setStatus('', 'NOT_SERVING');
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
        await uploads.close();
        await Promise.all([casStore.close?.(), acStore.close?.()]);
        log.info({ address }, 'remex stopped');
      })();
      return closed;
    },
  };
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
