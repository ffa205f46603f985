import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));
let remex: RemexProcess;

function execute(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, 'execute', '--server', remex.address, ...args], (err, stdout, stderr) =>
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

beforeAll(async () => {
  // Local workers run the actions (the embedded default); unschedulable actions fail fast.
  remex = await startRemex({
    config: { execution: { unschedulableTimeout: '1s' } },
    args: ['--workers', '2'],
  });
});

afterAll(async () => {
  expect(await remex?.stop()).toBe(0);
});

describe('remex execute', () => {
  it('runs a command with inputs, shows stdout and stderr, downloads outputs, returns the exit code', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'remex-exec-'));
    await mkdir(join(dir, 'sub'));
    await writeFile(join(dir, 'sub', 'name.txt'), 'world\n');
    const r = await execute([
      '--input',
      dir,
      '--output',
      'out.txt',
      '--output',
      'gen',
      '--env',
      'PATH=/usr/bin:/bin',
      '--',
      'sh',
      '-c',
      'echo hello $(cat sub/name.txt); echo to-stderr >&2; echo made > out.txt; mkdir -p gen/deep; printf "#!/bin/sh\\n" > gen/deep/run; chmod +x gen/deep/run; exit 3',
    ]);
    expect(r.code).toBe(3);
    expect(r.stdout).toBe('hello world\n');
    expect(r.stderr).toContain('to-stderr');
    expect(r.stderr).toMatch(/remex: (queued|executing)/);
    expect(await readFile(join(dir, 'out.txt'), 'utf8')).toBe('made\n');
    expect(await readFile(join(dir, 'gen', 'deep', 'run'), 'utf8')).toBe('#!/bin/sh\n');
    expect((await stat(join(dir, 'gen', 'deep', 'run'))).mode & 0o111).not.toBe(0);
  });

  it('serves a successful action from the cache the second time', async () => {
    const args = ['--', 'sh', '-c', `echo cached-${Date.now()}`];
    const first = await execute(args);
    expect(first.code).toBe(0);
    const second = await execute(args);
    expect(second.code).toBe(0);
    expect(second.stdout).toBe(first.stdout);
    expect(second.stderr).not.toMatch(/remex: executing/);
  });

  it('reports an action no worker can run, naming the property, with exit code 1', async () => {
    const r = await execute(['--platform', 'OSFamily=plan9', '--', 'true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no worker matches the platform properties OSFamily=plan9/);
  });

  it('enforces the action timeout', async () => {
    const r = await execute(['--timeout', '1', '--', 'sleep', '30']);
    // The process group is killed (SIGKILL: 128 + 9) and the status is DEADLINE_EXCEEDED (4).
    expect(r.code).toBe(137);
    expect(r.stderr).toMatch(/the action failed: the action timed out after 1 s \(code 4\)/);
  });

  it('rejects bad flags with a clear message', async () => {
    const r = await execute(['--env', 'NOEQUALS', '--', 'true']);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/--env "NOEQUALS": expected KEY=VALUE/);
  });
});
