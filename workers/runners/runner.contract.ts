import { randomInt } from 'node:crypto';
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** What a runner's test file hands the contract: the runner, and platform properties it needs. */
export interface ContractSetup {
  runner: Runner;
  /** Platform properties every spec carries (e.g. container-image for docker). */
  platform?: Map<string, string>;
  /** Called once after the suite (stop engines, remove images, ...). */
  cleanup?: () => Promise<void>;
}

/** The only PATH the contract's commands get: enough for a busybox chroot or image. */
const PATH = '/bin:/usr/bin';
/** How long a runner may take beyond the timeout to kill everything and return. */
const KILL_SLACK_MS = 2500;

/**
 * The behaviour every Runner shares, whatever it sandboxes with: exit codes, stdout and
 * stderr in their files, exactly the Command's environment, the working directory, outputs
 * visible on the host with their exec bit, timeout and cancel killing everything the
 * command started, and exit 127 for a program that is not there. Host paths in, host files
 * out: how a runner maps them inside its sandbox is its own business.
 *
 * Commands are busybox-compatible `sh -c '...'` with PATH=/bin:/usr/bin, so the suite also
 * runs inside a chroot holding nothing but busybox-static, or a busybox image.
 *
 * Usage, in `x-runner.test.ts`: `runnerContract('x', async () => ({ runner: new XRunner() }))`.
 */
export function runnerContract(name: string, setup: () => Promise<ContractSetup>): void {
  describe(`Runner contract: ${name}`, () => {
    let ctx: ContractSetup;
    let dir: string;
    let root: string;

    beforeAll(async () => {
      ctx = await setup();
    });
    afterAll(async () => {
      await ctx?.cleanup?.();
    });
    beforeEach(async () => {
      dir = await mkdtemp(join(tmpdir(), 'remex-contract-'));
      root = join(dir, 'root');
      await mkdir(join(root, 'sub'), { recursive: true });
    });
    afterEach(async () => {
      await rm(dir, { recursive: true, force: true });
    });

    const spec = (script: string | string[], extra: Partial<RunSpec> = {}): RunSpec => ({
      argv: typeof script === 'string' ? ['sh', '-c', script] : script,
      env: { PATH },
      cwd: root,
      inputRoot: root,
      signal: new AbortController().signal,
      stdoutPath: join(dir, 'stdout'),
      stderrPath: join(dir, 'stderr'),
      platform: ctx.platform ?? new Map(),
      ...extra,
    });
    const run = (script: string | string[], extra: Partial<RunSpec> = {}): Promise<RunResult> =>
      ctx.runner.run(spec(script, extra));
    const stdout = () => readFile(join(dir, 'stdout'), 'utf8');
    const stderr = () => readFile(join(dir, 'stderr'), 'utf8');

    it('passes the exit code through', async () => {
      const ok = await run('exit 0');
      expect(ok).toMatchObject({ exitCode: 0, timedOut: false, cancelled: false });
      expect(ok.startedAt).toBeInstanceOf(Date);
      expect(ok.completedAt.getTime()).toBeGreaterThanOrEqual(ok.startedAt.getTime());
      expect(await run('exit 3')).toMatchObject({ exitCode: 3, timedOut: false, cancelled: false });
    });

    it('reports death by a signal as 128 + the signal number', async () => {
      expect((await run('kill -TERM $$')).exitCode).toBe(128 + 15);
    });

    it('writes stdout and stderr to their files, each on its own', async () => {
      const r = await run('echo out; echo err >&2; echo more; exit 3');
      expect(r.exitCode).toBe(3);
      expect(await stdout()).toBe('out\nmore\n');
      expect(await stderr()).toBe('err\n');
      await run('true');
      expect(await stdout()).toBe('');
      expect(await stderr()).toBe('');
    });

    it('passes argv through verbatim', async () => {
      await run(['sh', '-c', 'for a in "$@"; do echo "[$a]"; done', 'sh', 'a b', "c'd", '$HOME', '']);
      expect(await stdout()).toBe("[a b]\n[c'd]\n[$HOME]\n[]\n");
    });

    it("gives the command exactly the Command's environment, none of the worker's", async () => {
      const secret = `REMEX_CONTRACT_SECRET_${process.pid}`;
      process.env[secret] = 'leaked';
      try {
        await run(
          `echo "FOO=$FOO"; echo "EMPTY=\${EMPTY-unset}"; echo "NOTSET=\${NOTSET-unset}"; ` +
            `echo "SECRET=\${${secret}-unset}"; echo "PATH=$PATH"`,
          { env: { PATH, FOO: 'bar baz', EMPTY: '' } },
        );
      } finally {
        delete process.env[secret];
      }
      expect(await stdout()).toBe(`FOO=bar baz\nEMPTY=\nNOTSET=unset\nSECRET=unset\nPATH=${PATH}\n`);
    });

    it('runs in the working directory, where relative paths reach the inputs', async () => {
      await writeFile(join(root, 'sub', 'data.txt'), 'in sub\n');
      await writeFile(join(root, 'top.txt'), 'at top\n');
      const r = await run('pwd; cat data.txt ../top.txt; ls', { cwd: join(root, 'sub') });
      expect(r.exitCode).toBe(0);
      const [pwd, ...rest] = (await stdout()).split('\n');
      expect(pwd).toMatch(/\/sub$/);
      expect(rest.join('\n')).toBe('in sub\nat top\ndata.txt\n');
    });

    it('runs a program given by a path relative to the working directory', async () => {
      await writeFile(join(root, 'sub', 'tool.sh'), '#!/bin/sh\necho "tool $1"\n');
      await chmod(join(root, 'sub', 'tool.sh'), 0o755);
      const r = await run(['./tool.sh', 'arg'], { cwd: join(root, 'sub') });
      expect(r.exitCode).toBe(0);
      expect(await stdout()).toBe('tool arg\n');
    });

    it('leaves what the command writes in the input root on the host, exec bits included', async () => {
      const r = await run(
        'mkdir -p out/deep && echo data > out/deep/file.txt && ' +
          'echo "#!/bin/sh" > out/tool && chmod 755 out/tool && cd sub && echo rel > made-here',
      );
      expect(r.exitCode).toBe(0);
      expect(await readFile(join(root, 'out', 'deep', 'file.txt'), 'utf8')).toBe('data\n');
      expect(await readFile(join(root, 'sub', 'made-here'), 'utf8')).toBe('rel\n');
      expect((await stat(join(root, 'out', 'tool'))).mode & 0o111).toBe(0o111);
      expect((await stat(join(root, 'out', 'deep', 'file.txt'))).mode & 0o111).toBe(0);
    });

    it('exits 127 with a message on stderr when the program does not exist', async () => {
      const r = await run(['no-such-program-remex'], { env: { PATH } });
      expect(r).toMatchObject({ exitCode: 127, timedOut: false, cancelled: false });
      expect(await stderr()).toContain('no-such-program-remex');
    });

    it('on timeout kills everything the command started, within about a second', async () => {
      const marker = uniqueMarker();
      const started = Date.now();
      const r = await run(
        `echo started; sleep ${marker} & sh -c 'sleep ${marker}; : ${marker}'; : ${marker}`,
        {
          timeoutMs: 1000,
        },
      );
      expect(Date.now() - started).toBeLessThan(1000 + KILL_SLACK_MS);
      expect(r).toMatchObject({ exitCode: 137, timedOut: true, cancelled: false });
      expect(await stdout()).toBe('started\n');
      expect(await processesWith(marker)).toEqual([]);
    });

    it('keeps running under a timeout longer than 2^31-1 ms (30 days) instead of killing at once', async () => {
      const r = await run('sleep 0.3; echo done', { timeoutMs: 30 * 24 * 3600 * 1000 });
      expect(r).toMatchObject({ exitCode: 0, timedOut: false, cancelled: false });
      expect(await stdout()).toBe('done\n');
    });

    it('kills what the command leaves running when it exits', async () => {
      const marker = uniqueMarker();
      const r = await run(`sleep ${marker} & exit 0`);
      expect(r.exitCode).toBe(0);
      expect(await processesWith(marker)).toEqual([]);
    });

    it('on abort kills everything the command started and reports cancelled', async () => {
      const marker = uniqueMarker();
      const abort = new AbortController();
      const running = run(`sleep ${marker} & : > started; sleep ${marker}; : ${marker}`, {
        signal: abort.signal,
      });
      await eventually(async () => (await stat(join(root, 'started')).catch(() => undefined)) !== undefined);
      const aborted = Date.now();
      abort.abort();
      const r = await running;
      expect(Date.now() - aborted).toBeLessThan(KILL_SLACK_MS);
      expect(r).toMatchObject({ cancelled: true, timedOut: false });
      expect(await processesWith(marker)).toEqual([]);
    });

    it('does not start a command whose signal is already aborted', async () => {
      const abort = new AbortController();
      abort.abort();
      const r = await run(': > ran', { signal: abort.signal });
      expect(r.cancelled).toBe(true);
      await expect(stat(join(root, 'ran'))).rejects.toThrow();
    });
  });
}

/** A number no other process has in its command line: `sleep N` sleeps for years. */
function uniqueMarker(): string {
  return String(randomInt(100_000_000, 999_999_999));
}

async function eventually(check: () => Promise<boolean>, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/**
 * Live processes (of any PID namespace the host can see) whose command line contains the
 * marker, waited for up to two seconds to go; a zombie has an empty command line and counts
 * as gone. Each as "pid: cmdline", so a failure shows what was left behind.
 */
async function processesWith(marker: string): Promise<string[]> {
  const scan = async () => {
    const found: string[] = [];
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const cmdline = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
      if (cmdline.includes(marker)) found.push(`${entry}: ${cmdline.replaceAll('\0', ' ').trim()}`);
    }
    return found;
  };
  const deadline = Date.now() + 2000;
  for (;;) {
    const found = await scan();
    if (found.length === 0 || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 50));
  }
}
