import type { Logger } from 'pino';
import { failedPrecondition } from '../../src/common/status.js';
import { ConfigError } from '../../src/common/config-error.js';
import { BubblewrapRunner } from './bubblewrap-runner.js';
import { HostToolsRunner } from './hosttools-runner.js';
import type { ChrootStore } from './chroot-store.js';
import { UserchrootRunner } from './userchroot-runner.js';
import { DockerRunner } from './docker-runner.js';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** The platform property that picks the runner; a worker advertises it once per runner offered. */
export const RUNNER_PROPERTY = 'runner';
/** The runner of actions that name none, unless the worker is told otherwise or does not offer it. */
export const DEFAULT_RUNNER = 'hosttools';

/** What detectors may take into account. */
export interface DetectOptions {
  /** Whether a sandboxed runner may give an action the network when it asks (`network=on`). */
  allowNetwork: boolean;
  /** Where chroot roots from the CAS are materialised (the userchroot runner needs it). */
  chroots?: ChrootStore;
  /** Where runners report trouble that does not fail an action. */
  log?: Logger;
}

/** One kind of runner: its name, and whether (and how) this host can run it. */
export interface RunnerDetector {
  name: string;
  /** The runner, or why this host cannot run it (said when the operator asked for it). */
  detect(options: DetectOptions): Promise<{ runner: Runner } | { unavailable: string }>;
}

/**
 * Every runner a worker knows, in the order they are offered. Add a runner here (name and
 * detector) and workers offer it wherever its detector finds it usable.
 */
export const RUNNER_DETECTORS: RunnerDetector[] = [
  { name: 'hosttools', detect: async () => ({ runner: new HostToolsRunner() }) },
  {
    name: 'bubblewrap',
    detect: async ({ allowNetwork }) =>
      (await BubblewrapRunner.available())
        ? { runner: new BubblewrapRunner({ allowNetwork }) }
        : {
            unavailable:
              'bwrap cannot build a sandbox here (is Debian package bubblewrap installed, and are user namespaces allowed?)',
          },
  },
  {
    name: 'userchroot',
    detect: async ({ chroots }) => {
      if (!chroots) return { unavailable: 'this worker has no store for chroot roots' };
      return (await UserchrootRunner.available())
        ? { runner: new UserchrootRunner({ chroots }) }
        : {
            unavailable:
              'bwrap cannot build a chroot sandbox here (Debian package bubblewrap, user namespaces)',
          };
    },
  },
  {
    name: 'docker',
    detect: async ({ allowNetwork, log }) =>
      (await DockerRunner.available())
        ? {
            runner: new DockerRunner({
              allowNetwork,
              onWarning: (message) => log?.warn({ runner: 'docker' }, message),
            }),
          }
        : {
            unavailable:
              'no Docker engine answers (DOCKER_HOST or /var/run/docker.sock; Debian package docker.io)',
          },
  },
];

export interface DetectRunnersOptions extends Partial<DetectOptions> {
  /** Only these runners, each of which must be usable here (default: every runner detected). */
  only?: readonly string[];
  /** The detectors to ask (default RUNNER_DETECTORS). */
  detectors?: readonly RunnerDetector[];
  /** Where to say which runners were left out and why. */
  log?: Logger;
}

/**
 * The runners this worker offers, name → Runner, in detector order: by default every
 * runner whose detector finds it usable (hosttools always); with `only`, exactly those,
 * and a name that is unknown or unusable here is a ConfigError saying why.
 */
export async function detectRunners(options: DetectRunnersOptions = {}): Promise<Map<string, Runner>> {
  const detectors = options.detectors ?? RUNNER_DETECTORS;
  const known = detectors.map((d) => d.name);
  for (const name of options.only ?? []) {
    if (!known.includes(name)) {
      throw new ConfigError(`runner ${JSON.stringify(name)} is unknown (known runners: ${known.join(', ')})`);
    }
  }
  if (options.only?.length === 0) throw new ConfigError('no runners to offer');
  const wanted = detectors.filter((d) => options.only?.includes(d.name) ?? true);
  const detectOptions: DetectOptions = {
    allowNetwork: options.allowNetwork ?? false,
    chroots: options.chroots,
    log: options.log,
  };
  const found = await Promise.all(
    wanted.map(async (d) => {
      try {
        return await d.detect(detectOptions);
      } catch (err) {
        return { unavailable: `detecting it failed: ${(err as Error).message}` };
      }
    }),
  );
  const runners = new Map<string, Runner>();
  wanted.forEach((d, i) => {
    const result = found[i]!;
    if ('runner' in result) {
      runners.set(d.name, result.runner);
    } else if (options.only) {
      throw new ConfigError(`runner ${d.name} is not available on this host: ${result.unavailable}`);
    } else {
      options.log?.info({ runner: d.name, reason: result.unavailable }, 'runner not offered');
    }
  });
  return runners;
}

/**
 * The runner a worker hands its actions to: it picks one of the worker's runners by the
 * action's `runner` platform property, the default runner when the action names none. An
 * action naming a runner this worker does not offer fails with FAILED_PRECONDITION naming it
 * (the scheduler routes by the advertised `runner` values, so this means a mismatch).
 */
export class RunnerSelector implements Runner {
  readonly names: readonly string[];
  /** The runner of actions that name none: as given, else hosttools when offered, else the first. */
  readonly defaultRunner: string;

  constructor(
    private readonly runners: ReadonlyMap<string, Runner>,
    defaultRunner?: string,
  ) {
    this.names = [...runners.keys()];
    if (this.names.length === 0) throw new ConfigError('no runners to offer');
    this.defaultRunner = defaultRunner ?? (runners.has(DEFAULT_RUNNER) ? DEFAULT_RUNNER : this.names[0]!);
    if (!runners.has(this.defaultRunner)) {
      throw new ConfigError(
        `default runner ${JSON.stringify(this.defaultRunner)} is not offered by this worker (it offers ${this.names.join(', ')})`,
      );
    }
  }

  /** The runner for an action with these platform properties (throws FAILED_PRECONDITION). */
  select(platform: ReadonlyMap<string, string>): Runner {
    const name = platform.get(RUNNER_PROPERTY) ?? this.defaultRunner;
    const runner = this.runners.get(name);
    if (!runner) {
      throw failedPrecondition(
        `platform property ${RUNNER_PROPERTY}=${name}: this worker does not offer that runner (it offers ${this.names.join(', ')})`,
      );
    }
    return runner;
  }

  async run(spec: RunSpec): Promise<RunResult> {
    return this.select(spec.platform).run(spec);
  }
}
