import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/common/config-error.js';
import {
  Action,
  Command,
  ExecuteRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { executionClientsFor } from '../../test/helpers/clients.js';
import { collect } from '../../test/helpers/execution.js';
import { startRemex, type RemexProcess } from '../../test/helpers/remex-process.js';
import { CasClient } from '../../src/remote/cas-client.js';
import { runWorkerCommand, WORKER_USAGE } from './cli.js';
import { digestOf } from '../../src/common/digest.js';

const BUILT_CLI = fileURLToPath(new URL('../../dist/workers/bot/cli.js', import.meta.url));

describe('runWorkerCommand flags', () => {
  it.each([
    [[], `--server is required\n\n${WORKER_USAGE}`],
    [['--server', 'h:1', '--capacity', '0'], '--capacity 0: expected a whole number >= 1'],
    [['--server', 'h:1', '--capacity', 'many'], '--capacity many: expected a whole number >= 1'],
    [['--server', 'h:1', '--property', 'novalue'], '--property "novalue": expected key=value'],
    [['--server', 'h:1', '--property', '=v'], '--property "=v": expected key=value'],
  ])('%j is refused with ConfigError', async (args, message) => {
    const err = await runWorkerCommand(args).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toBe(message);
  });

  it('refuses unknown flags the way parseArgs does', async () => {
    await expect(runWorkerCommand(['--server', 'h:1', '--bogus'])).rejects.toMatchObject({
      code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION',
    });
  });

  it('prints its usage for --help', async () => {
    const write = vi.spyOn(process.stdout, 'write').mockImplementation(() => true);
    try {
      await runWorkerCommand(['--help']);
      expect(write).toHaveBeenCalledWith(WORKER_USAGE);
    } finally {
      write.mockRestore();
    }
  });
});

describe('the worker as a process', () => {
  let remex: RemexProcess;
  let dir: string;
  beforeAll(async () => {
    remex = await startRemex({
      config: { execution: { unschedulableTimeout: '20s' } },
      args: ['--workers', '0'],
    });
    dir = await mkdtemp(join(tmpdir(), 'remex-worker-cli-'));
  });
  afterAll(async () => {
    expect(await remex?.stop()).toBe(0);
    await rm(dir, { recursive: true, force: true });
  });

  it('runs actions with properties from flags and stops cleanly on SIGTERM', async () => {
    expect(existsSync(BUILT_CLI), 'run `npm run build` first').toBe(true);
    const child = spawn(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `import(${JSON.stringify(BUILT_CLI)}).then((m) => m.runWorkerCommand(process.argv.slice(1)))`,
        '--',
        '--server',
        remex.address,
        '--capacity',
        '1',
        '--property',
        'pool=cli',
        '--property',
        'pool=other',
        '--work-dir',
        join(dir, 'work'),
        '--name',
        'cli',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));

    const cas = CasClient.connect(remex.address, { instanceName: '' });
    const x = executionClientsFor(remex.address);
    try {
      const command = Buffer.from(
        Command.encode(Command.fromPartial({ arguments: ['/bin/echo', 'from the cli worker'] })).finish(),
      );
      const empty = Buffer.alloc(0);
      const action = Buffer.from(
        Action.encode(
          Action.fromPartial({
            commandDigest: await digestOf(cas.digestFunction, command),
            inputRootDigest: await digestOf(cas.digestFunction, empty),
            platform: { properties: [{ name: 'pool', value: 'other' }] },
          }),
        ).finish(),
      );
      const actionDigest = await digestOf(cas.digestFunction, action);
      await cas.upload([
        { digest: await digestOf(cas.digestFunction, command), data: command },
        { digest: actionDigest, data: action },
      ]);
      const updates = await Promise.race([
        collect(x.execution.execute(ExecuteRequest.fromPartial({ actionDigest }))).done,
        exited.then((code) => {
          throw new Error(`the worker exited with ${code}:\n${stderr}`);
        }),
      ]);
      const result = updates.at(-1)!.response!.result!;
      expect((await cas.readBlob(result.stdoutDigest!, 'stdout')).toString()).toBe('from the cli worker\n');
      expect(result.executionMetadata!.worker).toBe(`cli-${child.pid}-0`);
    } finally {
      cas.close();
      x.close();
    }
    expect(stdout).toContain(`remex worker running 1 slot(s) against ${remex.address}`);
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    expect(stderr).toContain('worker stopped');
  });
});
