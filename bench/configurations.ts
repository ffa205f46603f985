import { availableParallelism } from 'node:os';
import { startRemex, type RemexProcess } from '../test/helpers/remex-process.js';
import type { ConfigInput } from '../src/config/config.js';

/**
 * One column of the bench: a way to run remex. Every scenario starts its own server
 * from the configuration, on loopback, with a fresh data directory. Configurations
 * backed by PostgreSQL, Redis or S3 are added here as those backends land: a start()
 * that brings the services up (or checks they are) and passes the config.
 */
export interface Configuration {
  /** Column heading and JSON key. */
  name: string;
  description: string;
  start(dataDir: string): Promise<RemexProcess>;
}

/** Local workers in the server: one per CPU, as the embedded default. */
export const WORKERS = availableParallelism();

function remexWith(config: ConfigInput | undefined) {
  return (dataDir: string) => startRemex({ config, dataDir, args: ['--workers', String(WORKERS)] });
}

export const CONFIGURATIONS: Configuration[] = [
  {
    name: 'embedded',
    description: `the embedded default: no config file, disk CAS and action cache in the data directory, ${WORKERS} local workers`,
    start: remexWith(undefined),
  },
];
