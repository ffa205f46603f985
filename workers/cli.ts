import { availableParallelism, homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from '../src/config/config.js';
import { startWorker } from './worker.js';
import { parseProperty } from './worker-properties.js';

export const WORKER_USAGE = `usage: remex worker --server ADDR [options]

  --server ADDR       host:port of the remex server (Bots service)
  --cas ADDR          host:port of the CAS (default: the server)
  --instance NAME     REAPI instance name (default: "")
  --capacity N        actions run at once, one bot session each (default: CPU count)
  --property K=V      advertised worker property; repeatable, a key may repeat
                      (OSFamily and ISA of this host are added unless given)
  --work-dir DIR      blob cache and action directories (default: ~/.cache/remex/worker)
  --name NAME         bot id prefix (default: the host name)
`;

/**
 * `remex worker`: parses the flags, starts the worker and runs it until SIGINT or SIGTERM
 * (a second signal exits at once). Bad flags throw ConfigError with the flag named.
 */
export async function runWorkerCommand(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      server: { type: 'string' },
      cas: { type: 'string' },
      instance: { type: 'string', default: '' },
      capacity: { type: 'string' },
      property: { type: 'string', multiple: true, default: [] },
      'work-dir': { type: 'string' },
      name: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(WORKER_USAGE);
    return;
  }
  if (!values.server) throw new ConfigError(`--server is required\n\n${WORKER_USAGE}`);
  const capacity = values.capacity === undefined ? availableParallelism() : Number(values.capacity);
  if (!Number.isInteger(capacity) || capacity < 1) {
    throw new ConfigError(`--capacity ${values.capacity}: expected a whole number >= 1`);
  }
  const properties = values.property.map((p) => {
    try {
      return parseProperty(p);
    } catch (err) {
      throw new ConfigError(`--${(err as Error).message}`);
    }
  });
  const worker = await startWorker({
    server: values.server,
    cas: values.cas,
    instanceName: values.instance,
    capacity,
    properties,
    workDir: values['work-dir'] ?? join(homedir(), '.cache', 'remex', 'worker'),
    name: values.name,
  });
  process.stdout.write(`remex worker running ${capacity} slot(s) against ${values.server}\n`);
  await new Promise<void>((resolve) => {
    let stopping = false;
    const onSignal = (signal: NodeJS.Signals) => {
      if (stopping) process.exit(1);
      stopping = true;
      process.stderr.write(`remex worker: ${signal}, stopping\n`);
      worker.stop().then(resolve, resolve);
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
}
