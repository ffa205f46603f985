import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Code, RemexError } from '../../src/common/status.js';
import { ConfigError } from '../../src/common/config-error.js';
import {
  ExecuteRequest,
  type Command,
  type Digest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { clientsFor, executionClientsFor, type DeepPartial } from '../../test/helpers/clients.js';
import { collect, uploadAction } from '../../test/helpers/execution.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { ActionExecutor } from '../bot/action-executor.js';
import { BlobCache } from '../staging/blob-cache.js';
import { BubblewrapRunner } from './bubblewrap-runner.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { runWorkerCommand } from '../bot/cli.js';
import { HostToolsRunner } from './hosttools-runner.js';
import { ACTION_TYPE_URL } from '../bot/lease-payload.js';
import type { RunResult, RunSpec, Runner } from './runner.js';
import { detectRunners, RunnerSelector, RUNNER_DETECTORS, type RunnerDetector } from './runner-selection.js';
import { startWorker, type RunningWorker } from '../bot/worker.js';
import { workerProperties } from '../bot/worker-properties.js';

/** A runner that only says who it is. */
class Named implements Runner {
  constructor(readonly name: string) {}
  async run(): Promise<RunResult> {
    return { exitCode: 0, timedOut: false, cancelled: false, startedAt: new Date(), completedAt: new Date() };
  }
}
const usable = (name: string): RunnerDetector => ({
  name,
  detect: async () => ({ runner: new Named(name) }),
});
const unusable = (name: string, why: string): RunnerDetector => ({
  name,
  detect: async () => ({ unavailable: why }),
});
const names = (m: Map<string, Runner>) => [...m.keys()];
const specWith = (platform: Record<string, string>) =>
  ({ platform: new Map(Object.entries(platform)) }) as unknown as RunSpec;

describe('detectRunners', () => {
  const detectors = [usable('hosttools'), unusable('bubblewrap', 'no bwrap'), usable('docker')];

  it('offers every runner whose detector finds it usable, in detector order', async () => {
    const logged: unknown[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => logged.push(JSON.parse(line)) });
    expect(names(await detectRunners({ detectors, log }))).toEqual(['hosttools', 'docker']);
    expect(logged).toEqual([
      expect.objectContaining({ runner: 'bubblewrap', reason: 'no bwrap', msg: 'runner not offered' }),
    ]);
  });

  it('offers exactly the runners asked for', async () => {
    expect(names(await detectRunners({ detectors, only: ['docker'] }))).toEqual(['docker']);
  });

  it('refuses a runner asked for that is unknown, or not usable here, saying why', async () => {
    await expect(detectRunners({ detectors, only: ['hosttools', 'podman'] })).rejects.toThrow(
      new ConfigError('runner "podman" is unknown (known runners: hosttools, bubblewrap, docker)'),
    );
    await expect(detectRunners({ detectors, only: ['bubblewrap'] })).rejects.toThrow(
      new ConfigError('runner bubblewrap is not available on this host: no bwrap'),
    );
    await expect(detectRunners({ detectors, only: [] })).rejects.toThrow(
      new ConfigError('no runners to offer'),
    );
  });

  it('treats a detector that throws as not usable', async () => {
    const broken: RunnerDetector = {
      name: 'broken',
      detect: async () => {
        throw new Error('engine exploded');
      },
    };
    expect(names(await detectRunners({ detectors: [usable('hosttools'), broken] }))).toEqual(['hosttools']);
    await expect(detectRunners({ detectors: [broken], only: ['broken'] })).rejects.toThrow(
      'runner broken is not available on this host: detecting it failed: engine exploded',
    );
  });

  it('passes allowNetwork to the detectors', async () => {
    const seen: boolean[] = [];
    const spy: RunnerDetector = {
      name: 'spy',
      detect: async (o) => {
        seen.push(o.allowNetwork);
        return { runner: new Named('spy') };
      },
    };
    await detectRunners({ detectors: [spy] });
    await detectRunners({ detectors: [spy], allowNetwork: true });
    expect(seen).toEqual([false, true]);
  });

  it('finds hosttools and bubblewrap on this host', async () => {
    expect(RUNNER_DETECTORS.map((d) => d.name).slice(0, 2)).toEqual(['hosttools', 'bubblewrap']);
    const runners = await detectRunners({ detectors: RUNNER_DETECTORS.slice(0, 2) });
    expect(runners.get('hosttools')).toBeInstanceOf(HostToolsRunner);
    expect(runners.get('bubblewrap')).toBeInstanceOf(BubblewrapRunner);
  });
});

describe('RunnerSelector', () => {
  const runners = new Map<string, Runner>([
    ['hosttools', new Named('hosttools')],
    ['bubblewrap', new Named('bubblewrap')],
  ]);

  it('picks the runner the action names, else the default', () => {
    const selector = new RunnerSelector(runners);
    expect(selector.names).toEqual(['hosttools', 'bubblewrap']);
    expect(selector.select(new Map([['runner', 'bubblewrap']]))).toBe(runners.get('bubblewrap'));
    expect(selector.select(new Map([['OSFamily', 'linux']]))).toBe(runners.get('hosttools'));
    const sandboxFirst = new RunnerSelector(runners, 'bubblewrap');
    expect(sandboxFirst.select(new Map())).toBe(runners.get('bubblewrap'));
    // Without hosttools and no default given: the first runner offered.
    const noHost = new RunnerSelector(new Map([...runners].reverse().slice(0, 1)));
    expect(noHost.defaultRunner).toBe('bubblewrap');
  });

  it('fails an action naming a runner it does not offer with FAILED_PRECONDITION naming it', async () => {
    const err = await new RunnerSelector(runners)
      .run(specWith({ runner: 'docker' }))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect(err).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message:
        'platform property runner=docker: this worker does not offer that runner (it offers hosttools, bubblewrap)',
    });
  });

  it('refuses a default runner it does not offer, and an empty set', () => {
    expect(() => new RunnerSelector(runners, 'docker')).toThrow(
      new ConfigError(
        'default runner "docker" is not offered by this worker (it offers hosttools, bubblewrap)',
      ),
    );
    expect(() => new RunnerSelector(new Map())).toThrow(new ConfigError('no runners to offer'));
  });
});

describe('workerProperties with runners', () => {
  it('advertises runner once per runner offered', () => {
    const props = workerProperties([{ key: 'pool', value: 'a' }], ['hosttools', 'bubblewrap']);
    expect(props.filter((p) => p.key === 'runner').map((p) => p.value)).toEqual(['hosttools', 'bubblewrap']);
    expect(props[0]).toEqual({ key: 'pool', value: 'a' });
  });

  it('keeps a given runner value that is offered, once, and refuses one that is not', () => {
    const props = workerProperties([{ key: 'runner', value: 'bubblewrap' }], ['hosttools', 'bubblewrap']);
    expect(props.filter((p) => p.key === 'runner').map((p) => p.value)).toEqual(['bubblewrap', 'hosttools']);
    expect(() => workerProperties([{ key: 'runner', value: 'docker' }], ['hosttools'])).toThrow(
      'property runner=docker: this worker does not offer that runner (it offers hosttools)',
    );
  });
});

describe('remex worker runner flags', () => {
  it.each([
    [
      ['--runners', 'hosttools,podman'],
      `--runners: runner "podman" is unknown (known runners: ${RUNNER_DETECTORS.map((d) => d.name).join(', ')})`,
    ],
    [['--runners', 'hosttools,'], '--runners "hosttools,": expected names separated by commas'],
    [
      ['--runners', 'hosttools', '--default-runner', 'bubblewrap'],
      '--default-runner bubblewrap: not offered by this worker (it offers hosttools)',
    ],
    [
      ['--runners', 'bubblewrap', '--property', 'runner=hosttools'],
      '--property runner=hosttools: not offered by this worker (use --runners; it offers bubblewrap)',
    ],
  ])('%j is refused with ConfigError', async (args, message) => {
    const err = await runWorkerCommand(['--server', 'h:1', ...args]).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toBe(message);
  });
});

// Through the real server: the scheduler routes by the advertised runner values, the worker
// hands each action to the runner it names, and the executor turns a runner it cannot
// honour into the lease status.
describe('runner selection end to end', () => {
  let remex: RemexProcess;
  let worker: RunningWorker;
  let x: ReturnType<typeof executionClientsFor>;
  let c: ReturnType<typeof clientsFor>;
  let cas: CasClient;
  let dir: string;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'remex-selection-'));
    await mkdir(join(dir, 'server'));
    remex = await startRemex({
      config: { execution: { unschedulableTimeout: '1s' } },
      dataDir: join(dir, 'server'),
      args: ['--workers', '0'],
    });
    x = executionClientsFor(remex.address);
    c = clientsFor(remex.address);
    cas = CasClient.connect(remex.address, { instanceName: '' });
    worker = await startWorker({
      server: remex.address,
      instanceName: '',
      capacity: 1,
      properties: [{ key: 'pool', value: 'selection' }],
      workDir: join(dir, 'worker'),
      name: 'sel',
      log: pino({ level: 'silent' }),
    });
  });
  afterAll(async () => {
    await worker?.stop();
    cas?.close();
    x?.close();
    c?.close();
    expect(await remex?.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  async function execute(args: string[], platform: Record<string, string>, command?: DeepPartial<Command>) {
    const { actionDigest } = await uploadAction(c, args, {
      command: { environmentVariables: [{ name: 'PATH', value: '/usr/bin:/bin' }], ...command },
      action: {
        platform: {
          properties: Object.entries({ pool: 'selection', ...platform })
            .sort(([a], [b]) => a.localeCompare(b))
            .map(([name, value]) => ({ name, value })),
        },
      },
    });
    const updates = await collect(
      x.execution.execute(ExecuteRequest.fromPartial({ actionDigest, skipCacheLookup: true })),
    ).done;
    return updates.at(-1)!.response!;
  }
  const text = async (d: Digest | undefined) => (await cas.readBlob(d!, 'blob')).toString();

  it('runs runner=bubblewrap in the sandbox and an action naming no runner on the host', async () => {
    expect(worker.runners).toEqual(expect.arrayContaining(['hosttools', 'bubblewrap']));
    expect(worker.defaultRunner).toBe('hosttools');
    // In the sandbox the shell is one of the first processes of a new PID namespace.
    const sandboxed = await execute(['sh', '-c', 'echo $$'], { runner: 'bubblewrap' });
    expect(sandboxed.status?.code ?? 0).toBe(Code.OK);
    expect(Number(await text(sandboxed.result!.stdoutDigest))).toBeLessThan(5);
    const onHost = await execute(['sh', '-c', 'echo $$'], {});
    expect(Number(await text(onHost.result!.stdoutDigest))).toBeGreaterThan(5);
    const named = await execute(['sh', '-c', 'echo $$'], { runner: 'hosttools' });
    expect(Number(await text(named.result!.stdoutDigest))).toBeGreaterThan(5);
  });

  it('an action naming a runner no worker offers never runs (FAILED_PRECONDITION)', async () => {
    const r = await execute(['true'], { runner: 'no-such-runner' });
    expect(r.status!.code).toBe(Code.FAILED_PRECONDITION);
    expect(r.status!.message).toContain('no-such-runner');
  });

  it('the executor reports a runner the worker does not offer as FAILED_PRECONDITION', async () => {
    await mkdir(join(dir, 'exec'));
    const executor = new ActionExecutor({
      cas,
      cache: await BlobCache.open(join(dir, 'cache'), cas),
      runner: new RunnerSelector(new Map([['hosttools', new HostToolsRunner()]])),
      execRoot: join(dir, 'exec'),
      log: pino({ level: 'silent' }),
    });
    const { action } = await uploadAction(c, ['true'], {
      action: { platform: { properties: [{ name: 'runner', value: 'docker' }] } },
    });
    const outcome = await executor.execute(
      { typeUrl: ACTION_TYPE_URL, value: action },
      'sel-direct',
      new AbortController().signal,
    );
    expect(outcome).toEqual({
      status: {
        code: Code.FAILED_PRECONDITION,
        message:
          'platform property runner=docker: this worker does not offer that runner (it offers hosttools)',
        details: [],
      },
    });
  });
});
