/**
 * Private instances of the real servers the scale-out tests run against, each started
 * on loopback in its own temporary directory on a free port and stopped by the test:
 * PostgreSQL 15 (Debian's postgresql-15), Redis 7 (redis-server), an S3-compatible
 * server (s3rver, from the npm registry) and nginx. scripts/setup-test-deps.sh installs
 * the Debian packages; a missing one fails here with the reason.
 */
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, chown, mkdtemp, rm, writeFile, mkdir } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const PG_BIN = '/usr/lib/postgresql/15/bin';
const REPO = resolve(import.meta.dirname, '../..');

export async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.once('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => res(port));
    });
  });
}

/** Resolves once something accepts TCP connections on port, or rejects after timeoutMs. */
export async function waitForPort(port: number, timeoutMs = 20_000, proc?: ChildProcess): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((res) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        res(true);
      });
      s.once('error', () => res(false));
    });
    if (ok) return;
    if (proc && proc.exitCode !== null)
      throw new Error(`process exited with ${proc.exitCode} before listening on ${port}`);
    if (Date.now() > until) throw new Error(`nothing listens on 127.0.0.1:${port} after ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function need(path: string, pkg: string): void {
  if (!existsSync(path))
    throw new Error(`${path} is missing: install Debian's ${pkg} (scripts/setup-test-deps.sh does, as root)`);
}

async function stopProcess(proc: ChildProcess, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill(signal);
  const timer = setTimeout(() => proc.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(timer);
}

/** Waits until proc listens on port; otherwise kills it and throws with its output. */
async function started(proc: ChildProcess, what: string, port: number, timeoutMs: number): Promise<void> {
  const output = collect(proc);
  try {
    await waitForPort(port, timeoutMs, proc);
  } catch (err) {
    proc.kill('SIGKILL');
    throw new Error(`${what} did not start: ${(err as Error).message}\n${output()}`, { cause: err });
  }
}

function collect(proc: ChildProcess): () => string {
  let out = '';
  const add = (b: Buffer) => {
    out = (out + b.toString()).slice(-8000);
  };
  proc.stdout?.on('data', add);
  proc.stderr?.on('data', add);
  return () => out;
}

export interface Postgres {
  port: number;
  /** postgres://… connection string for the database "remex". */
  url: string;
  /** Runs SQL through psql as the superuser; returns its stdout. */
  psql(sql: string): Promise<string>;
  stop(): Promise<void>;
}

/** A throwaway PostgreSQL 15 cluster (runs as the postgres user: the server refuses root). */
export async function startPostgres(): Promise<Postgres> {
  need(`${PG_BIN}/postgres`, 'postgresql-15');
  const dir = await mkdtemp(join(tmpdir(), 'remex-pg-'));
  await chmod(dir, 0o755);
  const data = join(dir, 'data');
  await mkdir(data);
  const { stdout: uidOut } = await run('id', ['-u', 'postgres']);
  const { stdout: gidOut } = await run('id', ['-g', 'postgres']);
  const uid = Number(uidOut.trim());
  const gid = Number(gidOut.trim());
  await chown(dir, uid, gid);
  await chown(data, uid, gid);
  const asPg = (cmd: string, args: string[]) => ['-u', 'postgres', '--', cmd, ...args];
  await run('runuser', asPg(`${PG_BIN}/initdb`, ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync']));
  const port = await freePort();
  const proc = spawn(
    'runuser',
    asPg(`${PG_BIN}/postgres`, [
      '-D',
      data,
      '-p',
      String(port),
      '-k',
      dir,
      '-c',
      'listen_addresses=127.0.0.1',
      '-c',
      'fsync=off',
      '-c',
      'synchronous_commit=off',
      '-c',
      'full_page_writes=off',
      '-c',
      'max_connections=200',
    ]),
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await started(proc, 'postgres', port, 30_000);
  const psql = async (sql: string) => {
    const { stdout } = await run(`${PG_BIN}/psql`, [
      '-h',
      '127.0.0.1',
      '-p',
      String(port),
      '-U',
      'postgres',
      '-d',
      'remex',
      '-Atc',
      sql,
    ]);
    return stdout;
  };
  // The server may accept connections a moment before it accepts logins.
  for (let i = 0; ; i++) {
    try {
      await run(`${PG_BIN}/psql`, [
        '-h',
        '127.0.0.1',
        '-p',
        String(port),
        '-U',
        'postgres',
        '-d',
        'postgres',
        '-c',
        'CREATE DATABASE remex',
      ]);
      break;
    } catch (err) {
      if (i > 50) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/remex`,
    psql,
    stop: async () => {
      // Signalling runuser does not reach the postmaster: ask it to stop itself (fast mode:
      // sessions are cut, nothing is left running on a deleted directory).
      await run('runuser', asPg(`${PG_BIN}/pg_ctl`, ['stop', '-D', data, '-m', 'fast', '-w'])).catch(
        () => {},
      );
      await stopProcess(proc, 'SIGINT');
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface Redis {
  port: number;
  url: string;
  /** Stops the server, keeping nothing (used to test connection loss). */
  kill(): Promise<void>;
  /** Starts it again on the same port after kill(). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<Redis> {
  need('/usr/bin/redis-server', 'redis-server');
  const dir = await mkdtemp(join(tmpdir(), 'remex-redis-'));
  const port = await freePort();
  let proc: ChildProcess;
  const launch = async () => {
    proc = spawn(
      '/usr/bin/redis-server',
      ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no'],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    await started(proc, 'redis-server', port, 20_000);
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill: () => stopProcess(proc, 'SIGKILL'),
    restart: launch,
    stop: async () => {
      await stopProcess(proc);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface S3 {
  port: number;
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  stop(): Promise<void>;
}

/** s3rver (npm) with one bucket; it accepts any credentials signed with S3RVER/S3RVER. */
export async function startS3(bucket = 'remex-cas'): Promise<S3> {
  const bin = join(REPO, 'node_modules/s3rver/bin/s3rver.js');
  need(bin, 's3rver (npm ci installs it)');
  const dir = await mkdtemp(join(tmpdir(), 'remex-s3-'));
  const port = await freePort();
  const proc = spawn(
    process.execPath,
    [
      bin,
      '--directory',
      dir,
      '--address',
      '127.0.0.1',
      '--port',
      String(port),
      '--configure-bucket',
      bucket,
      '--silent',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  await started(proc, 's3rver', port, 20_000);
  return {
    port,
    endpoint: `http://127.0.0.1:${port}`,
    bucket,
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    stop: async () => {
      await stopProcess(proc);
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface Nginx {
  port: number;
  dir: string;
  stop(): Promise<void>;
}

/**
 * Runs nginx in the foreground with the given config text; "{{PORT}}" and "{{DIR}}"
 * in it are replaced by its listening port and its private directory. `files` are
 * written beside nginx.conf first (name → text, with the same replacements), e.g. an
 * upstreams.conf the config includes by a relative path.
 */
export async function startNginx(
  config: string,
  port?: number,
  files: Record<string, string> = {},
): Promise<Nginx> {
  need('/usr/sbin/nginx', 'nginx');
  const dir = await mkdtemp(join(tmpdir(), 'remex-nginx-'));
  const listen = port ?? (await freePort());
  const fill = (text: string) => text.replaceAll('{{PORT}}', String(listen)).replaceAll('{{DIR}}', dir);
  for (const [name, text] of Object.entries(files)) await writeFile(join(dir, name), fill(text));
  const file = join(dir, 'nginx.conf');
  await writeFile(file, fill(config));
  const proc = spawn('/usr/sbin/nginx', ['-p', dir, '-c', file, '-g', 'daemon off;'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  await started(proc, 'nginx', listen, 20_000);
  return {
    port: listen,
    dir,
    stop: async () => {
      await stopProcess(proc, 'SIGQUIT');
      await rm(dir, { recursive: true, force: true });
    },
  };
}
