import { availableParallelism, homedir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from '../../src/common/config-error.js';
import { detectRunners, RUNNER_PROPERTY } from '../runners/runner-selection.js';
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
  --runners LIST      runners to offer, comma-separated (default: every one this host can
                      run: hosttools always, bubblewrap when bwrap works); each is
                      advertised as a value of property runner
  --default-runner NAME
                      runner of actions without a runner property (default:
                      hosttools, or the first of --runners without it)
  --allow-network     let sandboxed runners give an action the network when its
                      platform asks for network=on (default: refused, FAILED_PRECONDITION)
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
      runners: { type: 'string' },
      'default-runner': { type: 'string' },
      'allow-network': { type: 'boolean', default: false },
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
  const runnerNames = values.runners?.split(',').map((n) => n.trim());
  if (runnerNames?.some((n) => n === '')) {
    throw new ConfigError(`--runners ${JSON.stringify(values.runners)}: expected names separated by commas`);
  }
  const runners = await detectRunners({ only: runnerNames, allowNetwork: values['allow-network'] }).catch(
    (err: unknown) => {
      throw err instanceof ConfigError ? new ConfigError(`--runners: ${err.message}`) : err;
    },
  );
  const defaultRunner = values['default-runner'];
  if (defaultRunner !== undefined && !runners.has(defaultRunner)) {
    throw new ConfigError(
      `--default-runner ${defaultRunner}: not offered by this worker (it offers ${[...runners.keys()].join(', ')})`,
    );
  }
  for (const p of properties) {
    if (p.key === RUNNER_PROPERTY && !runners.has(p.value)) {
      throw new ConfigError(
        `--property ${RUNNER_PROPERTY}=${p.value}: not offered by this worker (use --runners; it offers ${[...runners.keys()].join(', ')})`,
      );
    }
  }
  const worker = await startWorker({
    server: values.server,
    cas: values.cas,
    instanceName: values.instance,
    capacity,
    properties,
    workDir: values['work-dir'] ?? join(homedir(), '.cache', 'remex', 'worker'),
    name: values.name,
    runners,
    defaultRunner,
  });
  process.stdout.write(
    `remex worker running ${capacity} slot(s) against ${values.server} with runners ${[...runners.keys()].join(', ')} (default ${worker.defaultRunner})\n`,
  );
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
