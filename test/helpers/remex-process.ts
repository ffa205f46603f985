import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import type { ConfigInput } from '../../src/config/config.js';

const BIN = fileURLToPath(new URL('../../bin/remex.js', import.meta.url));

export interface RemexProcess {
  /** host:port the server listens on. */
  address: string;
  port: number;
  dataDir: string;
  child: ChildProcess;
  /** Everything the server wrote to stderr so far (its log). */
  log(): string;
  /** Sends SIGTERM and waits for the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Starts the real `remex serve` (the built bin/remex.js, as a user runs it) on a free
 * loopback port with its own data directory, and waits until it is listening.
 */
export async function startRemex(
  options: { config?: ConfigInput; dataDir?: string; args?: string[] } = {},
): Promise<RemexProcess> {
  const dataDir = options.dataDir ?? (await mkdtemp(join(tmpdir(), 'remex-it-')));
  const args = [BIN, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...(options.args ?? [])];
  if (options.config) {
    const file = join(dataDir, 'remex.yaml');
    await writeFile(file, stringify(options.config));
    args.push('--config', file);
  }
  const child = spawn(process.execPath, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, REMEX_LOG_LEVEL: process.env.REMEX_LOG_LEVEL ?? 'info' },
  });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  const address = await new Promise<string>((resolve, reject) => {
    let stdout = '';
    const onData = (c: Buffer) => {
      stdout += c.toString();
      const m = /remex listening on (\S+)/.exec(stdout);
      if (m) {
        child.stdout!.off('data', onData);
        resolve(m[1]!);
      }
    };
    child.stdout!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`remex exited with ${code} before listening:\n${stderr}`)));
    setTimeout(() => reject(new Error(`remex did not start within 30 s:\n${stderr}`)), 30_000).unref();
  });
  const port = Number(address.slice(address.lastIndexOf(':') + 1));
  return {
    address,
    port,
    dataDir,
    child,
    log: () => stderr,
    stop: () =>
      new Promise((resolve) => {
        // A process killed by a signal has a signalCode and no exitCode; it exited all the same.
        if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
        child.once('exit', (code) => resolve(code));
        child.kill('SIGTERM');
      }),
  };
}

/** Peak resident set size (VmHWM) of a running process, in bytes, from /proc. */
export async function peakRss(pid: number): Promise<number> {
  const { readFile } = await import('node:fs/promises');
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const m = /VmHWM:\s+(\d+) kB/.exec(status);
  if (!m) throw new Error(`no VmHWM for pid ${pid}`);
  return Number(m[1]) * 1024;
}
