import { Instances } from '../common/instances.js';
import { log } from '../common/log.js';
import type { Config } from '../config/config.js';
import type { Execution } from '../execution/execution.js';
import { serveGrpc } from '../server/grpc-server.js';
import { startMetricsEndpoint } from '../server/metrics-endpoint.js';
import { openExecution } from './execution.js';
import { startLocalWorkers } from './local-workers.js';
import { servicesFor } from './services.js';
import { openStorage } from './storage.js';
import { startSweeper } from './sweeper.js';

export interface RunningServer {
  /** The address actually bound (with the real port when 0 was asked for). */
  address: string;
  port: number;
  /** Graceful stop: refuses new calls, lets running ones finish for up to graceMs, then cuts them. */
  close(graceMs?: number): Promise<void>;
}

// Headroom over the batch limit for the rest of the message (digests, framing).
const MESSAGE_OVERHEAD = 1 << 20;

/**
 * The composition root of `remex serve`: builds the storage, the scheduler and the
 * services the config's roles need, serves them on one gRPC server, starts the local
 * workers of the embedded default, and stops everything in order. Nothing imports it
 * but the CLI.
 */
export async function startServer(config: Config): Promise<RunningServer> {
  const roles = new Set(config.services);
  const serveExecution = roles.has('execution') && config.execution.enabled;
  const storage = await openStorage(config, {
    actionCache: roles.has('actioncache') || serveExecution,
    cas: roles.has('cas'),
  });
  let execution: Execution | undefined;
  if (serveExecution && storage.actionCache)
    execution = await openExecution(config, storage.cas, storage.actionCache);
  const services = servicesFor(config, {
    instances: new Instances(config.instanceNames),
    storage,
    serveActionCache: roles.has('actioncache'),
    execution,
  });
  const server = await serveGrpc(services.all, {
    listen: config.listen,
    maxMessageBytes: config.maxBatchTotalSizeBytes + MESSAGE_OVERHEAD,
  });
  const scheduler = execution?.scheduler;
  const names = services.execution.map((s) => s.name);
  const stopSweeper = scheduler ? startSweeper(scheduler, (ok) => server.setServing(names, ok)) : () => {};
  const metrics = config.metrics.listen ? await startMetricsEndpoint(config.metrics.listen) : undefined;
  log.info(
    {
      address: server.address,
      roles: config.services,
      instances: config.instanceNames,
      cas: config.cas.type,
      scheduler: scheduler ? config.execution.scheduler.type : undefined,
      services: services.all.map((s) => s.name),
      metrics: metrics?.address,
    },
    'remex serving',
  );
  // Local workers need Bots and the CAS from this process; a split role runs none.
  const stopWorkers =
    serveExecution && roles.has('cas') && config.workers.count > 0
      ? await startLocalWorkers(config, server.address, server.port)
      : async () => {};

  let closed: Promise<void> | undefined;
  return {
    address: server.address,
    port: server.port,
    close(graceMs = config.shutdownGrace) {
      closed ??= (async () => {
        await stopWorkers();
        // Refuse new work, answer held bot polls, let running calls finish (they still
        // reach the scheduler's store), and only then release the storage.
        scheduler?.drain();
        await server.shutdown(graceMs);
        stopSweeper();
        await scheduler?.close();
        await metrics?.close();
        await storage.close();
        log.info({ address: server.address }, 'remex stopped');
      })();
      return closed;
    },
  };
}
