/**
 * Acceptance test: BuildStream 1.6.8 (Debian's `buildstream`) uses remex as its artifact cache.
 *
 * It builds the fixture project (test/fixtures/buildstream, see its README) and pushes every
 * artifact to a real `remex serve`. It then pulls every artifact into an empty local cache and
 * checks that nothing gets rebuilt and that the checkout matches the project sources exactly.
 * A second, empty remex proves that the pull really came from the server.
 *
 * bst's exit code proves little (it exits 0 when the remote is unusable or lacks the artifacts),
 * so every step is checked against the summary lines bst prints on stderr.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { constants } from 'node:fs';
import { access, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { call, clientsFor } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';
import type {
  FetchDirectoryRequest,
  FetchDirectoryResponse,
} from '../../src/gen/build/bazel/remote/asset/v1/remote_asset.js';

const REPO = fileURLToPath(new URL('../../', import.meta.url));
const PROJECT = join(REPO, 'test/fixtures/buildstream/project');
const PROJECT_NAME = 'remex-fixture';
const ELEMENTS = ['base.bst', 'app.bst', 'big.bst', 'system.bst', 'target.bst'];
/** Import elements whose sources, overlaid, make up the checkout of target.bst. */
const IMPORTED_TREES = ['base', 'big', 'app'];
const ASSET_URN = (ref: string) => `urn:fdc:buildstream.build:2020:v1:${ref}`;
const BST_TIMEOUT_MS = 45_000;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

let root: string;
let env: NodeJS.ProcessEnv;
let remex: RemexProcess | undefined;
let emptyRemex: RemexProcess | undefined;

/** Finds an executable on PATH, like `command -v`. */
async function onPath(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (!dir) continue;
    const file = join(dir, name);
    try {
      await access(file, constants.X_OK);
      return file;
    } catch {
      // not here
    }
  }
  return undefined;
}

function run(cmd: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: REPO,
      env: options.env ?? process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${cmd} ${args.join(' ')} timed out after ${BST_TIMEOUT_MS} ms\n${stderr}`));
    }, BST_TIMEOUT_MS);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Writes a bst user config with its own (initially empty) local cache, pointed at `remote`. */
async function bstConfig(name: string, remote: RemexProcess): Promise<string> {
  const dir = join(root, name);
  await mkdir(dir, { recursive: true });
  const file = join(root, `${name}.conf`);
  await writeFile(
    file,
    [
      `sourcedir: ${join(dir, 'sources')}`,
      `builddir: ${join(dir, 'build')}`,
      `artifactdir: ${join(dir, 'artifacts')}`,
      `logdir: ${join(dir, 'logs')}`,
      'scheduler:',
      '  network-retries: 0',
      '  on-error: quit',
      'artifacts:',
      `  url: ${remoteUrl(remote)}`,
      '  push: true',
      '',
    ].join('\n'),
  );
  return file;
}

const remoteUrl = (remote: RemexProcess) => `http://${remote.address}`;

/** Runs bst on the fixture project; expects exit 0 and a usable remote. */
async function bst(config: string, ...args: string[]): Promise<Run> {
  const r = await run(
    'bst',
    ['--no-interactive', '--no-colors', '-C', PROJECT, '--config', config, ...args],
    { env },
  );
  const what = `bst ${args.join(' ')} (exit ${r.code})\n--- stderr ---\n${r.stderr}\n--- stdout ---\n${r.stdout}`;
  expect(r.code, what).toBe(0);
  // An unusable remote is only a warning: bst then carries on locally and still exits 0.
  expect(r.stderr, what).not.toMatch(/Failed to initialize remote/);
  expect(r.stderr, what).not.toMatch(/No artifact caches available/);
  return r;
}

/** No request made the server log an error (pino level >= 50: internal errors, data loss). */
function expectNoServerErrors(server: RemexProcess) {
  const errors = server
    .log()
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as { level: number })
    .filter((entry) => entry.level >= 50);
  expect(errors, `remex at ${server.address} logged errors:\n${server.log()}`).toEqual([]);
}

const count = (text: string, re: RegExp) =>
  [...text.matchAll(new RegExp(re.source, re.flags.includes('g') ? re.flags : re.flags + 'g'))].length;
const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/** `bst show` as a map element → state (and element → full cache key). */
async function show(config: string): Promise<Map<string, { key: string; state: string }>> {
  const r = await bst(
    config,
    'show',
    '--deps',
    'all',
    '--format',
    '%{name} %{full-key} %{state}',
    'target.bst',
  );
  const lines = r.stdout.split('\n').filter((l) => l.trim() !== '');
  const out = new Map<string, { key: string; state: string }>();
  for (const line of lines) {
    const m = /^(\S+\.bst) ([0-9a-f]{64}) (\S+)$/.exec(line);
    expect(m, `unexpected bst show line: ${JSON.stringify(line)}\n${r.stdout}`).not.toBeNull();
    out.set(m![1]!, { key: m![2]!, state: m![3]! });
  }
  expect(lines).toHaveLength(ELEMENTS.length);
  expect([...out.keys()].sort()).toEqual([...ELEMENTS].sort());
  return out;
}

type Entry =
  | { type: 'dir' }
  | { type: 'symlink'; target: string }
  | { type: 'file'; size: number; executable: boolean; sha256: string };

/** Every path under `dir` with its type, link target, size, exec bit and content hash. */
async function snapshot(
  dir: string,
  into = new Map<string, Entry>(),
  base = dir,
): Promise<Map<string, Entry>> {
  for (const name of await readdir(dir)) {
    const path = join(dir, name);
    const rel = relative(base, path);
    const st = await lstat(path);
    if (st.isSymbolicLink()) into.set(rel, { type: 'symlink', target: await readlink(path) });
    else if (st.isDirectory()) {
      into.set(rel, { type: 'dir' });
      await snapshot(path, into, base);
    } else if (st.isFile()) {
      const sha256 = createHash('sha256')
        .update(await readFile(path))
        .digest('hex');
      into.set(rel, { type: 'file', size: st.size, executable: (st.mode & 0o111) !== 0, sha256 });
    } else throw new Error(`unexpected file type at ${path}`);
  }
  return into;
}

/** Asks a remex directly whether it holds the artifact refs for the given strong keys. */
async function fetchArtifacts(remote: RemexProcess, keys: Map<string, { key: string }>) {
  const clients = clientsFor(remote.address);
  try {
    const results = new Map<string, { code: number; response?: FetchDirectoryResponse }>();
    for (const [element, { key }] of keys) {
      const uri = ASSET_URN(`${PROJECT_NAME}/${element.replace(/\.bst$/, '')}/${key}`);
      try {
        const response = await call<FetchDirectoryRequest, FetchDirectoryResponse>(
          clients.fetch.fetchDirectory,
          clients.fetch,
          {
            instanceName: '',
            timeout: undefined,
            oldestContentAccepted: undefined,
            uris: [uri],
            qualifiers: [],
            digestFunction: 0,
          },
        );
        results.set(element, { code: status.OK, response });
      } catch (err) {
        results.set(element, { code: (err as { code: number }).code });
      }
    }
    return results;
  } finally {
    clients.close();
  }
}

describe('BuildStream 1.6.8 artifact cache on remex', () => {
  let configA: string;
  let configB: string;
  let keys: Map<string, { key: string; state: string }>;

  beforeAll(async () => {
    const missing = [];
    if (!(await onPath('bst')))
      missing.push('`bst` (Debian package `buildstream`, which brings `python3-buildstream`)');
    if (!(await onPath('bwrap'))) missing.push('`bwrap` (Debian package `bubblewrap`)');
    if (missing.length > 0) {
      throw new Error(
        `BuildStream acceptance test needs ${missing.join(' and ')} on PATH. ` +
          'Install them with `apt-get install -y --no-install-recommends buildstream` ' +
          '(scripts/setup-test-deps.sh is meant to do this). See test/fixtures/buildstream/README.md.',
      );
    }
    const version = await run('bst', ['--version']);
    expect(version.code, `bst --version failed:\n${version.stderr}`).toBe(0);
    expect(version.stdout.trim(), 'this test and its fixture are written for BuildStream 1.6.x').toMatch(
      /^1\.6\.\d+$/,
    );
    try {
      await access(join(REPO, 'dist/src/cli.js'));
    } catch {
      throw new Error(
        'remex is not built: run `npm run build` first (the test starts bin/remex.js, which runs dist/)',
      );
    }

    root = await mkdtemp(join(tmpdir(), 'remex-bst-'));
    // bst writes nothing to $HOME or the project once these point into the temp dir.
    env = {
      ...process.env,
      XDG_CACHE_HOME: join(root, 'xdg/cache'),
      XDG_CONFIG_HOME: join(root, 'xdg/config'),
      XDG_DATA_HOME: join(root, 'xdg/data'),
    };
    await mkdir(join(root, 'remex'));
    remex = await startRemex({ dataDir: join(root, 'remex') });
    configA = await bstConfig('a', remex);
    configB = await bstConfig('b', remex);
  });

  afterAll(async () => {
    try {
      const codes = [];
      for (const server of [remex, emptyRemex])
        if (server) codes.push({ address: server.address, code: await server.stop(), log: server.log() });
      for (const { address, code, log } of codes)
        expect(code, `remex at ${address} did not exit cleanly:\n${log}`).toBe(0);
    } finally {
      if (root) await rm(root, { recursive: true, force: true });
    }
  });

  it('builds all 5 elements and pushes every artifact to remex', async () => {
    const before = await show(configA);
    for (const [element, { state }] of before) expect(state, element).toMatch(/^(buildable|waiting)$/);
    keys = before;

    const r = await bst(configA, 'build', 'target.bst');
    const log = r.stderr;
    expect(log, log).toMatch(/^\s*Build Queue:\s+processed 5, skipped 0, failed 0/m);
    expect(log, log).toMatch(/^\s*Push Queue:\s+processed 5, skipped 0, failed 0/m);
    const pushed = new RegExp(`INFO\\s+Pushed artifact (\\w+) -> ${escape(remoteUrl(remex!))}`, 'g');
    expect(count(log, pushed), log).toBe(5);
    // Each pushed artifact is one of the 5 elements' keys (bst prints the first 8 hex digits).
    const shortKeys = new Set([...keys.values()].map(({ key }) => key.slice(0, 8)));
    expect(new Set([...log.matchAll(pushed)].map((m) => m[1]))).toEqual(shortKeys);

    // remex itself now resolves every element's strong-key ref to a directory.
    const held = await fetchArtifacts(remex!, keys);
    for (const [element, { code, response }] of held) {
      expect(code, `FetchDirectory for ${element}`).toBe(status.OK);
      expect(response!.rootDirectoryDigest?.hash, element).toMatch(/^[0-9a-f]{64}$/);
    }
    expectNoServerErrors(remex!);
  });

  it('pulls every artifact into an empty local cache', async () => {
    const before = await show(configB);
    for (const [element, { key, state }] of before) {
      expect(state, `${element} must not be cached before the pull`).toMatch(/^(buildable|waiting)$/);
      expect(key, `${element}: same key in both caches`).toBe(keys.get(element)!.key);
    }

    const r = await bst(configB, 'pull', '--deps', 'all', 'target.bst');
    const log = r.stderr;
    expect(log, log).toMatch(/^\s*Pull Queue:\s+processed 5, skipped 0, failed 0/m);
    expect(count(log, new RegExp(`Pulled artifact \\w+ <- ${escape(remoteUrl(remex!))}`)), log).toBe(5);
    expect(log, log).not.toMatch(/does not have \w+ cached/);
    expectNoServerErrors(remex!);
  });

  it('has every element cached after the pull and rebuilds nothing', async () => {
    const r = await bst(configB, 'show', '--deps', 'all', '--format', '%{name} %{state}', 'target.bst');
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    expect(lines, r.stdout).toHaveLength(5);
    for (const line of lines) expect(line).toMatch(/^\S+\.bst cached$/);

    const build = await bst(configB, 'build', 'target.bst');
    const log = build.stderr;
    expect(log, log).toMatch(/^\s*Build Queue:\s+processed 0, skipped 0, failed 0/m);
    expect(log, log).not.toMatch(/\[\s*build:\S+/);
    expect(log, log).not.toMatch(/Pulling artifact|Pushing artifact/);
    expectNoServerErrors(remex!);
  });

  it('checks out a tree identical to the project sources (symlink, empty file, exec bit)', async () => {
    const out = join(root, 'checkout');
    await bst(configB, 'checkout', 'target.bst', out);

    const expected = new Map<string, Entry>();
    for (const tree of IMPORTED_TREES) await snapshot(join(PROJECT, 'files', tree), expected);
    const actual = await snapshot(out);
    expect(Object.fromEntries([...actual].sort())).toEqual(Object.fromEntries([...expected].sort()));

    // The interesting entries really are in the comparison.
    expect(actual.get('usr/share/remex/link-to-a.txt')).toEqual({ type: 'symlink', target: 'a.txt' });
    expect(actual.get('usr/share/remex/empty.txt')).toMatchObject({ type: 'file', size: 0 });
    expect(actual.get('usr/bin/remex-hello')).toMatchObject({ type: 'file', executable: true });
    expect(actual.get('usr/share/remex/a.txt')).toMatchObject({ type: 'file', executable: false });
    expect(actual.get('usr/share/remex/big.txt')).toMatchObject({
      type: 'file',
      size: 3_158_103,
      sha256: expect.stringMatching(/^df46dcfc[0-9a-f]{52}d071$/),
    });
  });

  it('pulls nothing from a fresh, empty remex (so the pull above came from the server)', async () => {
    await mkdir(join(root, 'remex-empty'));
    emptyRemex = await startRemex({ dataDir: join(root, 'remex-empty') });
    const configC = await bstConfig('c', emptyRemex);

    const held = await fetchArtifacts(emptyRemex, keys);
    for (const [element, { code }] of held)
      expect(code, `FetchDirectory for ${element} on the empty remex`).toBe(status.NOT_FOUND);

    const r = await bst(configC, 'pull', '--deps', 'all', 'target.bst');
    const log = r.stderr;
    expect(log, log).toMatch(/^\s*Pull Queue:\s+processed 0, skipped 5, failed 0/m);
    expect(
      count(log, new RegExp(`Remote \\(${escape(remoteUrl(emptyRemex))}\\) does not have \\w+ cached`)),
      log,
    ).toBe(5);
    expect(log, log).not.toMatch(/Pulled artifact/);

    const after = await show(configC);
    for (const [element, { state }] of after) expect(state, element).not.toBe('cached');
    expectNoServerErrors(emptyRemex);
  });
});
