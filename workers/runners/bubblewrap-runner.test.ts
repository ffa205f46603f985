import { spawn } from 'node:child_process';
import { randomInt } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Code, RemexError } from '../../src/common/status.js';
import { BubblewrapRunner } from './bubblewrap-runner.js';
import type { RunSpec } from './runner.js';

const BUILT_RUNNER = fileURLToPath(
  new URL('../../dist/workers/runners/bubblewrap-runner.js', import.meta.url),
);
const PATH = '/usr/local/bin:/usr/bin:/bin';

let dir: string;
let root: string;
let server: Server;
let port: number;

beforeAll(async () => {
  if (!(await BubblewrapRunner.available())) {
    throw new Error('bwrap cannot run here: install Debian package bubblewrap (and allow user namespaces)');
  }
  server = createServer((socket) => socket.end());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  port = (server.address() as { port: number }).port;
});
afterAll(async () => {
  await new Promise((resolve) => server?.close(resolve));
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'remex-bwrap-'));
  root = join(dir, 'root');
  await mkdir(join(root, 'sub'), { recursive: true });
});
afterEach(async () => {
  await rm(dir, { recursive: true, force: true });
});

function spec(argv: string[], extra: Partial<RunSpec> = {}): RunSpec {
  return {
    argv,
    env: { PATH },
    cwd: root,
    inputRoot: root,
    signal: new AbortController().signal,
    stdoutPath: join(dir, 'stdout'),
    stderrPath: join(dir, 'stderr'),
    platform: new Map(),
    ...extra,
  };
}
const sh = (script: string, extra: Partial<RunSpec> = {}) => spec(['sh', '-c', script], extra);
const stdout = () => readFile(join(dir, 'stdout'), 'utf8');
const stderr = () => readFile(join(dir, 'stderr'), 'utf8');
const connect = () => [
  process.execPath,
  '-e',
  `require('net').connect(${port}, '127.0.0.1').on('connect', () => process.exit(0)).on('error', (e) => { console.error(e.code); process.exit(7); })`,
];
const exists = (path: string) =>
  stat(path).then(
    () => true,
    () => false,
  );

describe('BubblewrapRunner', () => {
  const runner = new BubblewrapRunner();

  it('is available where bwrap works, and not with a bwrap that does not exist', async () => {
    expect(await BubblewrapRunner.available()).toBe(true);
    expect(await BubblewrapRunner.available('/nonexistent/bwrap')).toBe(false);
  });

  it('keeps the input root at its host path, so the working directory is the same', async () => {
    const r = await runner.run(spec(['pwd'], { cwd: join(root, 'sub') }));
    expect(r.exitCode).toBe(0);
    expect(await stdout()).toBe(`${join(root, 'sub')}\n`);
  });

  it('cannot reach the network by default, not even the host loopback', async () => {
    const r = await runner.run(spec(connect()));
    expect(r.exitCode).toBe(7);
    // The same command on the host reaches the server: the sandbox is what stops it.
    const onHost = spawn(connect()[0]!, connect().slice(1), { stdio: 'ignore' });
    expect(await new Promise((resolve) => onHost.once('exit', resolve))).toBe(0);
  });

  it('reaches the network with network=on when the worker allows it', async () => {
    const open = new BubblewrapRunner({ allowNetwork: true });
    const r = await open.run(spec(connect(), { platform: new Map([['network', 'on']]) }));
    expect(r.exitCode).toBe(0);
    const off = await open.run(spec(connect(), { platform: new Map([['network', 'off']]) }));
    expect(off.exitCode).toBe(7);
  });

  it('fails network=on with FAILED_PRECONDITION when the worker does not allow it', async () => {
    const err = await runner
      .run(spec(connect(), { platform: new Map([['network', 'on']]) }))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect(err).toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message:
        "platform property network=on: this worker's bubblewrap runner does not allow network access (start the worker with --allow-network)",
    });
    expect(existsSync(join(dir, 'stdout'))).toBe(false);
  });

  it('fails an unknown network value with INVALID_ARGUMENT', async () => {
    await expect(
      runner.run(spec(['true'], { platform: new Map([['network', 'yes']]) })),
    ).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: 'platform property network=yes: expected "on" or "off"',
    });
  });

  it('cannot write outside the input root', async () => {
    const marker = `remex-outside-${randomInt(1e9)}`;
    const outside = await mkdtemp(join('/var/tmp', 'remex-bwrap-outside-'));
    try {
      const r = await runner.run(
        sh(
          `echo x > /${marker}; a=$?; echo x > ${outside}/${marker}; b=$?; echo x > ${dir}/${marker}; echo $a $b`,
        ),
      );
      expect(r.exitCode).toBe(0);
      expect(await stdout()).toMatch(/^[1-9]\d* [1-9]\d*\n$/);
      expect(await stderr()).toMatch(/Read-only file system/);
      expect(await exists(`/${marker}`)).toBe(false);
      expect(await readdir(outside)).toEqual([]);
      // Beside the input root is the private /tmp (when the root is under /tmp): not the host's.
      expect(await exists(join(dir, marker))).toBe(false);
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it('gives the action a private /tmp that never reaches the host', async () => {
    const n = randomInt(1e9);
    const onHost = join('/tmp', `remex-bwrap-host-${n}`);
    const inSandbox = join('/tmp', `remex-bwrap-private-${n}`);
    await writeFile(onHost, 'host\n');
    try {
      const r = await runner.run(
        sh(`echo private > ${inSandbox} && cat ${inSandbox} && if [ -e ${onHost} ]; then echo leak; fi`),
      );
      expect(r.exitCode).toBe(0);
      expect(await stdout()).toBe('private\n');
      expect(await exists(inSandbox)).toBe(false);
    } finally {
      await rm(onHost, { force: true });
    }
  });

  it('runs the action in a new PID namespace', async () => {
    const r = await runner.run(sh('echo $$; ls /proc | grep -c "^[0-9]"'));
    expect(r.exitCode).toBe(0);
    const [pid, count] = (await stdout()).trim().split('\n').map(Number);
    expect(pid).toBeLessThan(5);
    expect(count).toBeLessThan(6);
  });

  it("keeps the Command's environment out of the host's process list", async () => {
    const secret = `remex-secret-${randomInt(1e9)}`;
    const abort = new AbortController();
    const running = runner.run(
      sh(': > started; sleep 30', { env: { PATH, TOKEN: secret }, signal: abort.signal }),
    );
    for (let i = 0; i < 200 && !(await exists(join(root, 'started'))); i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    const cmdlines = await Promise.all(
      (await readdir('/proc'))
        .filter((e) => /^\d+$/.test(e))
        .map((e) => readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')),
    );
    abort.abort();
    expect((await running).cancelled).toBe(true);
    expect(cmdlines.filter((c) => c.includes('sleep 30'))).not.toEqual([]);
    expect(cmdlines.filter((c) => c.includes(secret))).toEqual([]);
  });

  it('exits 126 for a program that is not executable', async () => {
    await writeFile(join(root, 'data.txt'), 'x');
    const r = await runner.run(spec(['./data.txt']));
    expect(r.exitCode).toBe(126);
    expect(await stderr()).toContain('EACCES');
  });

  it('dies with the worker: killing the worker process kills the sandbox', async () => {
    if (!existsSync(BUILT_RUNNER)) throw new Error(`${BUILT_RUNNER} is missing: run npm run build first`);
    const marker = String(randomInt(100_000_000, 999_999_999));
    const script = `
      import { BubblewrapRunner } from ${JSON.stringify(BUILT_RUNNER)};
      await new BubblewrapRunner().run({
        argv: ['sh', '-c', 'sleep ${marker} & : > started; sleep ${marker}'],
        env: { PATH: '/usr/bin:/bin' }, cwd: ${JSON.stringify(root)}, inputRoot: ${JSON.stringify(root)},
        signal: new AbortController().signal, platform: new Map(),
        stdoutPath: ${JSON.stringify(join(dir, 'stdout'))}, stderrPath: ${JSON.stringify(join(dir, 'stderr'))},
      });`;
    const worker = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: 'inherit' });
    for (let i = 0; i < 400 && !(await exists(join(root, 'started'))); i++) {
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(await exists(join(root, 'started'))).toBe(true);
    worker.kill('SIGKILL');
    await new Promise((resolve) => worker.once('exit', resolve));
    let left: string[] = [];
    for (let i = 0; i < 80; i++) {
      left = [];
      for (const e of (await readdir('/proc')).filter((p) => /^\d+$/.test(p))) {
        if ((await readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')).includes(marker)) left.push(e);
      }
      if (left.length === 0) break;
      await new Promise((r) => setTimeout(r, 25));
    }
    expect(left).toEqual([]);
  });
});
