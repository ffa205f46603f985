import { credentials } from '@grpc/grpc-js';
import { mkdir } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { log as processLog } from '../../src/common/log.js';
import { BotsClient } from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';
import { ActionExecutor } from './action-executor.js';
import { BlobCache } from '../staging/blob-cache.js';
import { BotSlot } from './bot-slot.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { CHANNEL_OPTIONS } from '../../src/remote/grpc-call.js';
import { removeTree } from '../../src/remote/remove-tree.js';
import { makeOwnedDir } from '../staging/stale-dirs.js';
import type { Runner } from '../runners/runner.js';
import { detectRunners, RunnerSelector } from '../runners/runner-selection.js';
import { ChrootStore } from '../runners/chroot-store.js';
import { workerProperties, type WorkerProperty } from './worker-properties.js';

export interface WorkerOptions {
  /** host:port of the Bots service. */
  server: string;
  /** host:port of the CAS (default: the server). */
  cas?: string;
  instanceName: string;
  /** Actions run at once: one bot session per slot. */
  capacity: number;
  /** Advertised properties (a key may repeat); OSFamily and ISA of the host are added unless given. */
  properties: WorkerProperty[];
  /** Holds the blob cache and the per-action directories. */
  workDir: string;
  /** Prefix of the bot ids (default: the host name); ids are `${name}-${pid}-${slot}`. */
  name?: string;
  /**
   * The runners offered, name → Runner, each advertised as a `runner` property value
   * (default: detected on this host, see runnerNames and allowNetwork).
   */
  runners?: ReadonlyMap<string, Runner>;
  /** With runners detected: offer exactly these, each of which must work here (default: all that do). */
  runnerNames?: string[];
  /** The runner of actions without a `runner` platform property (default: hosttools, else the first offered). */
  defaultRunner?: string;
  /** Whether sandboxed runners give an action the network when it asks with `network=on` (default false). */
  allowNetwork?: boolean;
  /** UpdateBotSession deadline (default 40 s; the server long-polls for a little less). */
  pollTimeoutMs?: number;
  /** Where to log (default: the process log, JSON lines on stderr). */
  log?: Logger;
}

export interface RunningWorker {
  /** The bot ids of the slots, in slot order. */
  botIds: string[];
  /** The runners offered (advertised as `runner` values), and the one for actions naming none. */
  runners: readonly string[];
  defaultRunner: string;
  /** Stops every slot: running actions are killed and handed back to the server. */
  stop(): Promise<void>;
}

/**
 * Starts a remex worker: `capacity` independent bot sessions against the Bots service at
 * `server`, sharing one CAS client (one RPC limiter), one blob cache under
 * `{workDir}/cache`, and its runners (those given, else every one this host can run:
 * hosttools, bubblewrap, ...), of which each action's `runner` platform property picks one.
 * Each action runs in a fresh directory under a per-process directory under
 * `{workDir}/exec`, removed when the worker stops. Resolves once the slots are started
 * (they connect, and reconnect, in the background).
 */
export async function startWorker(options: WorkerOptions): Promise<RunningWorker> {
  if (!Number.isInteger(options.capacity) || options.capacity < 1) {
    throw new RangeError(`capacity must be a whole number >= 1, got ${options.capacity}`);
  }
  const log = (options.log ?? processLog).child({ component: 'worker' });
  const cas = CasClient.connect(options.cas ?? options.server, {
    instanceName: options.instanceName,
    concurrency: Math.max(16, options.capacity * 2),
  });
  await mkdir(options.workDir, { recursive: true });
  const cache = await BlobCache.open(join(options.workDir, 'cache'), cas);
  const chroots = new ChrootStore(join(options.workDir, 'chroots'), cache);
  const runner = new RunnerSelector(
    options.runners ??
      (await detectRunners({ only: options.runnerNames, allowNetwork: options.allowNetwork, chroots, log })),
    options.defaultRunner,
  );
  const properties = workerProperties(options.properties, runner.names);
  const execRoot = await makeOwnedDir(join(options.workDir, 'exec'), 'p');
  const executor = new ActionExecutor({
    cas,
    cache,
    runner,
    execRoot,
    log,
  });
  const bots = new BotsClient(options.server, credentials.createInsecure(), CHANNEL_OPTIONS);
  const prefix = options.name ?? hostname();

  const slots = Array.from({ length: options.capacity }, (_, i) => {
    const botId = `${prefix}-${process.pid}-${i}`;
    return new BotSlot({
      bots,
      instanceName: options.instanceName,
      botId,
      worker: { devices: [{ handle: botId, properties }], properties, configs: [] },
      run: (lease, signal) => executor.execute(lease.payload, botId, signal),
      log: log.child({ bot: botId }),
      pollTimeoutMs: options.pollTimeoutMs,
    });
  });
  for (const slot of slots) slot.start();
  log.info(
    {
      server: options.server,
      cas: options.cas ?? options.server,
      instance: options.instanceName,
      capacity: options.capacity,
      properties,
      defaultRunner: runner.defaultRunner,
    },
    'worker started',
  );

  let stopped: Promise<void> | undefined;
  return {
    botIds: slots.map((s) => s.botId),
    runners: runner.names,
    defaultRunner: runner.defaultRunner,
    stop() {
      stopped ??= (async () => {
        await Promise.all(slots.map((s) => s.stop()));
        bots.close();
        cas.close();
        await chroots.close();
        await Promise.all([removeTree(execRoot), cache.close()]);
        log.info('worker stopped');
      })();
      return stopped;
    },
  };
}
