import type { Config } from '../config/config.js';
import { resolvePath } from '../config/config.js';
import { log } from '../common/log.js';
import { startWorker } from '../../workers/bot/worker.js';
import { parseProperty } from '../../workers/bot/worker-properties.js';

/**
 * The embedded default's workers: in this process, reaching the server over loopback
 * through the same Bots and CAS services a remote worker uses. Bot sessions belong to one
 * instance, so each instance name gets its own slots. Returns the function that stops them.
 */
export async function startLocalWorkers(
  config: Config,
  address: string,
  port: number,
): Promise<() => Promise<void>> {
  const workers = await Promise.all(
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
  );
  log.info({ slots: config.workers.count, instances: config.instanceNames.length }, 'local workers started');
  return async () => {
    await Promise.all(workers.map((w) => w.stop()));
  };
}
