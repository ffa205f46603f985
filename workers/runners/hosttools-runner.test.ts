import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HostToolsRunner } from './hosttools-runner.js';
import type { RunSpec } from './runner.js';

let dir: string;
const runner = new HostToolsRunner();

beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'remex-runner-'));
  await mkdir(join(dir, 'root', 'sub'), { recursive: true });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spec(argv: string[], extra: Partial<RunSpec> = {}): RunSpec {
  return {
    argv,
    env: { PATH: '/usr/bin:/bin' },
    cwd: join(dir, 'root'),
    inputRoot: join(dir, 'root'),
    signal: new AbortController().signal,
    stdoutPath: join(dir, 'stdout'),
    stderrPath: join(dir, 'stderr'),
    platform: new Map(),
    ...extra,
  };
}
const stdout = () => readFile(join(dir, 'stdout'), 'utf8');
const stderr = () => readFile(join(dir, 'stderr'), 'utf8');

/** Whether a process is gone (a zombie waiting for init to reap it counts as gone). */
async function isGone(pid: number): Promise<boolean> {
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).startsWith('Z');
  } catch {
    return true;
  }
}
async function eventuallyGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    if (await isGone(pid)) return true;
    await new Promise((r) => setTimeout(r, 20));
  }
  return false;
}

describe('HostToolsRunner', () => {
  it('returns the exit code and writes stdout and stderr to their files', async () => {
    const r = await runner.run(spec(['sh', '-c', 'echo out; echo err >&2; exit 3']));
    expect(r).toMatchObject({ exitCode: 3, timedOut: false, cancelled: false });
    expect(r.completedAt.getTime()).toBeGreaterThanOrEqual(r.startedAt.getTime());
    expect(await stdout()).toBe('out\n');
    expect(await stderr()).toBe('err\n');
    expect((await runner.run(spec(['true']))).exitCode).toBe(0);
  });

  it('reports death by signal as 128 + the signal number', async () => {
    const r = await runner.run(spec(['sh', '-c', 'kill -TERM $$']));
    expect(r.exitCode).toBe(128 + 15);
  });

  it("gives the process exactly the Command's environment, not the worker's", async () => {
    process.env.REMEX_WORKER_SECRET = 'leak';
    try {
      await runner.run(spec(['env'], { env: { PATH: '/usr/bin:/bin', FOO: 'bar baz', EMPTY: '' } }));
    } finally {
      delete process.env.REMEX_WORKER_SECRET;
    }
    expect((await stdout()).split('\n').filter(Boolean).sort()).toEqual([
      'EMPTY=',
      'FOO=bar baz',
      'PATH=/usr/bin:/bin',
    ]);
  });

  it('runs in the working directory', async () => {
    await runner.run(spec(['pwd'], { cwd: join(dir, 'root', 'sub') }));
    expect(await stdout()).toBe(`${join(dir, 'root', 'sub')}\n`);
  });

  it("looks a bare argv[0] up in the Command's PATH, and keeps argv[0] as given", async () => {
    await mkdir(join(dir, 'tools'));
    await writeFile(join(dir, 'tools', 'mytool'), '#!/bin/sh\necho "tool $0 $*"\n');
    await chmod(join(dir, 'tools', 'mytool'), 0o755);
    const r = await runner.run(
      spec(['mytool', 'a', 'b'], { env: { PATH: `/nonexistent:${join(dir, 'tools')}:/bin` } }),
    );
    expect(r.exitCode).toBe(0);
    expect(await stdout()).toBe(`tool ${join(dir, 'tools', 'mytool')} a b\n`);
  });

  it('resolves an argv[0] containing a slash against the working directory, not PATH', async () => {
    await writeFile(join(dir, 'root', 'sub', 'run.sh'), '#!/bin/sh\necho here\n');
    await chmod(join(dir, 'root', 'sub', 'run.sh'), 0o755);
    const r = await runner.run(
      spec(['./run.sh'], { cwd: join(dir, 'root', 'sub'), env: { PATH: '/nonexistent' } }),
    );
    expect(r.exitCode).toBe(0);
    expect(await stdout()).toBe('here\n');
    const fromRoot = await runner.run(spec(['sub/run.sh']));
    expect(fromRoot.exitCode).toBe(0);
  });

  it('exits 127 with the reason on stderr when the program is not in PATH', async () => {
    const r = await runner.run(spec(['no-such-tool-xyz'], { env: { PATH: '/usr/bin:/bin' } }));
    expect(r.exitCode).toBe(127);
    expect(await stderr()).toBe(
      'remex worker: cannot run "no-such-tool-xyz" was not found in PATH "/usr/bin:/bin"\n',
    );
    const missing = await runner.run(spec(['./missing.sh']));
    expect(missing.exitCode).toBe(127);
    expect(await stderr()).toContain('ENOENT');
  });

  it('exits 126 when the program is not executable', async () => {
    await writeFile(join(dir, 'root', 'data.txt'), 'not a program');
    const r = await runner.run(spec(['./data.txt']));
    expect(r.exitCode).toBe(126);
    expect(await stderr()).toContain('EACCES');
  });

  it('on timeout kills the whole process group, grandchildren included', async () => {
    const pidFile = join(dir, 'grandchild.pid');
    const started = Date.now();
    const r = await runner.run(
      spec(['sh', '-c', `sleep 300 & echo $! > ${pidFile}; echo started; wait`], { timeoutMs: 500 }),
    );
    expect(r).toMatchObject({ timedOut: true, cancelled: false, exitCode: 128 + 9 });
    expect(Date.now() - started).toBeLessThan(5000);
    expect(await stdout()).toBe('started\n');
    const grandchild = Number(await readFile(pidFile, 'utf8'));
    expect(await eventuallyGone(grandchild)).toBe(true);
  });

  it('kills background processes left in the group when the command exits', async () => {
    const pidFile = join(dir, 'daemon.pid');
    const r = await runner.run(spec(['sh', '-c', `sleep 300 & echo $! > ${pidFile}; exit 0`]));
    expect(r.exitCode).toBe(0);
    expect(await eventuallyGone(Number(await readFile(pidFile, 'utf8')))).toBe(true);
  });

  it('on abort kills the process group and reports cancelled', async () => {
    const pidFile = join(dir, 'grandchild.pid');
    const abort = new AbortController();
    const running = runner.run(
      spec(['sh', '-c', `sleep 300 & echo $! > ${pidFile}; wait`], { signal: abort.signal }),
    );
    for (let i = 0; i < 100; i++) {
      if ((await readFile(pidFile, 'utf8').catch(() => '')).trim()) break;
      await new Promise((r) => setTimeout(r, 20));
    }
    abort.abort();
    const r = await running;
    expect(r).toMatchObject({ cancelled: true, timedOut: false });
    expect(await eventuallyGone(Number(await readFile(pidFile, 'utf8')))).toBe(true);
  });

  it('does not start a command whose signal is already aborted', async () => {
    const abort = new AbortController();
    abort.abort();
    const r = await runner.run(spec(['sh', '-c', `touch ${join(dir, 'ran')}`], { signal: abort.signal }));
    expect(r.cancelled).toBe(true);
    await expect(readFile(join(dir, 'ran'))).rejects.toThrow();
  });
});
