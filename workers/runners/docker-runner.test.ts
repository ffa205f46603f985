import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { connect, createServer as createTcpServer, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createServer as createTlsServer } from 'node:tls';
import { promisify } from 'node:util';
import Docker from 'dockerode';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { Code, RemexError } from '../../src/common/status.js';
import {
  ACTION_LABEL,
  DockerRunner,
  demultiplex,
  parseMemory,
  type DockerRunnerOptions,
} from './docker-runner.js';
import { toStatus } from '../bot/lease-status.js';
import { runnerContract } from './runner.contract.js';
import type { RunSpec } from './runner.js';

const run = promisify(execFile);
const IMAGE = 'remex-test/busybox:1';
/** The busybox image with an ENV and an ENTRYPOINT, to show neither reaches the action. */
const ENV_IMAGE = `remex-test/busybox-env:${process.pid}`;
const PATH = '/bin:/usr/bin';

let envReady: Promise<void> | undefined;
/** Starts the engine and builds the test image once per file (scripts/docker-env.sh). */
function dockerEnv(): Promise<void> {
  envReady ??= run('bash', [join(import.meta.dirname, '..', '..', 'scripts', 'docker-env.sh')], {
    timeout: 300_000,
  }).then(
    () => undefined,
    (err: Error & { stdout?: string; stderr?: string }) => {
      throw new Error(
        `scripts/docker-env.sh could not provide a Docker engine and ${IMAGE}:\n${err.stdout ?? ''}${err.stderr ?? err.message}`,
      );
    },
  );
  return envReady;
}

runnerContract('docker', async () => {
  await dockerEnv();
  return {
    runner: new DockerRunner(),
    platform: new Map([['container-image', `docker://${IMAGE}`]]),
  };
});

describe('DockerRunner', () => {
  /** A label only this file's containers carry, so parallel test files do not disturb the count. */
  const testLabel = { 'remex.test': randomUUID() };
  const docker = new Docker();
  let dir: string;
  let root: string;

  const runner = (options: DockerRunnerOptions = {}) =>
    new DockerRunner({ labels: testLabel, pull: 'never', ...options });
  const spec = (script: string | string[], extra: Partial<RunSpec> = {}): RunSpec => ({
    argv: typeof script === 'string' ? ['sh', '-c', script] : script,
    env: { PATH },
    cwd: root,
    inputRoot: root,
    signal: new AbortController().signal,
    stdoutPath: join(dir, 'stdout'),
    stderrPath: join(dir, 'stderr'),
    platform: new Map([['container-image', IMAGE]]),
    ...extra,
  });
  const platform = (props: Record<string, string>) =>
    new Map(Object.entries({ 'container-image': `docker://${IMAGE}`, ...props }));
  const stdout = () => readFile(join(dir, 'stdout'), 'utf8');
  const stderr = () => readFile(join(dir, 'stderr'), 'utf8');
  const ours = () =>
    docker.listContainers({
      all: true,
      filters: { label: [`${ACTION_LABEL}=1`, `remex.test=${testLabel['remex.test']}`] },
    });

  beforeAll(async () => {
    await dockerEnv();
    const base = (await run('docker', ['create', IMAGE])).stdout.trim();
    try {
      await run('docker', [
        'commit',
        '--change',
        'ENV IMAGE_SECRET=from-image',
        '--change',
        'ENTRYPOINT ["/bin/echo", "ENTRYPOINT-RAN"]',
        base,
        ENV_IMAGE,
      ]);
    } finally {
      await run('docker', ['rm', '-f', base]);
    }
  });
  afterAll(async () => {
    await run('docker', ['rmi', '-f', ENV_IMAGE]).catch(() => undefined);
  });
  beforeEach(async () => {
    dir = await mkdtemp(join(tmpdir(), 'remex-docker-'));
    root = join(dir, 'root');
    await mkdir(root);
  });
  afterEach(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('runs in the image the platform names, with or without docker://', async () => {
    const r = await runner().run(spec('cat /etc/passwd | head -1; readlink /bin/sh'));
    expect(r.exitCode).toBe(0);
    expect(await stdout()).toBe('root:x:0:0:root:/root:/bin/sh\nbusybox\n');
    const again = await runner().run(spec('echo hi', { platform: platform({}) }));
    expect(again.exitCode).toBe(0);
  });

  it("keeps the image's ENV and ENTRYPOINT away from the action", async () => {
    const r = await runner().run(
      spec(['sh', '-c', 'echo "IMAGE_SECRET=${IMAGE_SECRET-unset} PATH=$PATH"'], {
        platform: new Map([['container-image', ENV_IMAGE]]),
      }),
    );
    expect(r.exitCode).toBe(0);
    expect(await stdout()).toBe(`IMAGE_SECRET=unset PATH=${PATH}\n`);
  });

  /** An HTTP GET with busybox nc (busybox-static's wget crashes in getaddrinfo). */
  const fetch = (url: string) => {
    const { hostname, port } = new URL(url);
    return `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${hostname} ${port}`;
  };

  it('has no network by default: only lo, and a server on the host is out of reach', async () => {
    const gateway = (
      await docker
        .getNetwork('bridge')
        .inspect()
        .catch(() => undefined)
    )?.IPAM?.Config?.[0]?.Gateway as string | undefined;
    let requests = 0;
    const server: Server = createServer((_req, res) => {
      requests++;
      res.end('reached\n');
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (err) =>
        reject(new Error(`cannot listen on the docker bridge's gateway ${gateway}: ${err.message}`)),
      );
      server.listen(0, gateway ?? '127.0.0.1', resolve);
    });
    const url = `http://${gateway ?? '127.0.0.1'}:${(server.address() as AddressInfo).port}/`;
    try {
      const r = await runner().run(spec(`ip -o link | cut -d: -f2; ${fetch(url)}`));
      expect(r.exitCode).not.toBe(0);
      expect((await stdout()).trim()).toBe('lo');
      expect(requests).toBe(0);

      // The same command reaches the server when the network is allowed and asked for:
      // the check above is about the sandbox, not a server nobody could reach.
      if (gateway) {
        const on = await runner({ allowNetwork: true }).run(
          spec(fetch(url), { platform: platform({ network: 'on' }) }),
        );
        expect(await stderr()).toBe('');
        expect(on.exitCode).toBe(0);
        expect(await stdout()).toMatch(/\r\n\r\nreached\n$/);
        expect(requests).toBe(1);
      }
    } finally {
      server.close();
    }
  });

  it('refuses network=on unless the worker allows it, and rejects bad network values', async () => {
    const refused = runner().run(spec('true', { platform: platform({ network: 'on' }) }));
    await expect(refused).rejects.toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: expect.stringContaining('does not allow'),
    });
    await expect(
      runner().run(spec('true', { platform: platform({ dockerNetwork: 'standard' }) })),
    ).rejects.toThrow(/network/);
    await expect(
      runner({ allowNetwork: true }).run(spec('true', { platform: platform({ network: 'maybe' }) })),
    ).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining('network="maybe"'),
    });
    expect((await runner().run(spec('true', { platform: platform({ network: 'off' }) }))).exitCode).toBe(0);
  });

  it('cannot write outside the bind-mounted input root, and sees no other host directory', async () => {
    const outside = await mkdtemp(join(tmpdir(), 'remex-docker-outside-'));
    const marker = `remex-escape-${randomUUID()}`;
    try {
      const r = await runner().run(
        spec(
          `echo x > /${marker} && cat /${marker}; ` +
            `if [ -e ${outside} ]; then echo visible; else echo absent; fi; ` +
            `mkdir -p ${outside} && echo y > ${outside}/${marker}; echo inside > in-root`,
        ),
      );
      expect(r.exitCode).toBe(0);
      expect(await stdout()).toBe('x\nabsent\n');
      await expect(stat(`/${marker}`)).rejects.toThrow();
      await expect(stat(join(outside, marker))).rejects.toThrow();
      expect(await readFile(join(root, 'in-root'), 'utf8')).toBe('inside\n');
    } finally {
      await rm(outside, { recursive: true, force: true });
    }
  });

  it('removes the container after success, failure, a missing program, timeout and cancel', async () => {
    const r = runner();
    expect((await r.run(spec('echo ok'))).exitCode).toBe(0);
    expect(await ours()).toEqual([]);
    expect((await r.run(spec('exit 3'))).exitCode).toBe(3);
    expect(await ours()).toEqual([]);
    expect((await r.run(spec(['no-such-program-remex']))).exitCode).toBe(127);
    expect(await ours()).toEqual([]);
    expect(await r.run(spec('sleep 30', { timeoutMs: 500 }))).toMatchObject({
      timedOut: true,
      exitCode: 137,
    });
    expect(await ours()).toEqual([]);

    const abort = new AbortController();
    const running = r.run(spec(': > started; sleep 30', { signal: abort.signal }));
    for (let i = 0; i < 300; i++) {
      if (await stat(join(root, 'started')).catch(() => undefined)) break;
      expect((await ours()).length).toBeLessThanOrEqual(1);
      await new Promise((res) => setTimeout(res, 25));
    }
    expect((await ours()).map((c) => c.Labels[ACTION_LABEL])).toEqual(['1']); // labelled while it runs
    abort.abort();
    expect(await running).toMatchObject({ cancelled: true, timedOut: false });
    expect(await ours()).toEqual([]);
  });

  it('applies memory and CPU limits from the platform', async () => {
    const r = await runner().run(
      spec(
        'cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; ' +
          'cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d" " -f1 /sys/fs/cgroup/cpu.max',
        { platform: platform({ memory: '64m', cpus: '0.5' }) },
      ),
    );
    expect(r.exitCode).toBe(0);
    expect((await stdout()).split('\n')).toEqual([String(64 * 1024 * 1024), '50000', '']);
  });

  it('rejects bad memory and cpus values with INVALID_ARGUMENT', async () => {
    await expect(
      runner().run(spec('true', { platform: platform({ memory: 'lots' }) })),
    ).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining('memory="lots"'),
    });
    await expect(runner().run(spec('true', { platform: platform({ cpus: '-1' }) }))).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: expect.stringContaining('cpus="-1"'),
    });
    expect(parseMemory('1073741824')).toBe(1024 ** 3);
    expect(parseMemory('512m')).toBe(512 * 1024 ** 2);
    expect(parseMemory('1GiB')).toBe(1024 ** 3);
    expect(parseMemory('1.5g')).toBe(1.5 * 1024 ** 3);
    expect(parseMemory('2KB')).toBe(2048);
  });

  it('fails clearly without a container-image property', async () => {
    const err = await runner()
      .run(spec('true', { platform: new Map([['OSFamily', 'linux']]) }))
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RemexError);
    expect(err).toMatchObject({ code: Code.INVALID_ARGUMENT });
    expect((err as Error).message).toMatch(/needs the platform property container-image/);
    expect(toStatus(err).code).toBe(Code.INVALID_ARGUMENT); // what the lease reports
    expect(await ours()).toEqual([]);
  });

  it('fails clearly when the image is missing and the pull policy is never', async () => {
    const image = `remex-test/no-such-image:${process.pid}`;
    await expect(
      runner({ pull: 'never' }).run(
        spec('true', { platform: new Map([['container-image', `docker://${image}`]]) }),
      ),
    ).rejects.toMatchObject({
      code: Code.FAILED_PRECONDITION,
      message: expect.stringMatching(
        new RegExp(`image ${image} is not on the docker engine .*pull policy is never`),
      ),
    });
  });

  it("lets the action's docker-pull override the runner's pull policy", async () => {
    const image = `remex-test/no-such-image:${process.pid}`;
    const props = (pull: string) =>
      new Map([
        ['container-image', image],
        ['docker-pull', pull],
      ]);
    await expect(
      runner({ pull: 'if-missing' }).run(spec('true', { platform: props('never') })),
    ).rejects.toThrow(/pull policy is never/);
    await expect(runner({ pull: 'never' }).run(spec('true', { platform: props('always') }))).rejects.toThrow(
      /^cannot pull image/,
    );
    await expect(runner().run(spec('true', { platform: props('sometimes') }))).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
      message: 'platform property docker-pull="sometimes": expected never, if-missing, always',
    });
  });

  it('fails clearly when the image is missing and cannot be pulled', async () => {
    const image = `remex-test/no-such-image:${process.pid}`;
    const err = await runner({ pull: 'if-missing' })
      .run(spec('true', { platform: new Map([['container-image', image]]) }))
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: Code.FAILED_PRECONDITION });
    expect((err as Error).message).toMatch(
      new RegExp(`^cannot pull image ${image} through the docker engine .*: .+`),
    );
    expect(await ours()).toEqual([]);
  });

  it('reports a program that cannot run as 127 even without docker-init', async () => {
    const r = await runner({ init: false }).run(spec(['no-such-program-remex']));
    expect(r).toMatchObject({ exitCode: 127, timedOut: false, cancelled: false });
    expect(await stderr()).toMatch(/no-such-program-remex.*not found/);
    expect(await ours()).toEqual([]);
  });

  it('says when the engine does not answer, and available() tells beforehand', async () => {
    const engine = { socketPath: join(dir, 'no-docker.sock') };
    expect(await DockerRunner.available()).toBe(true);
    expect(await DockerRunner.available({ engine })).toBe(false);
    expect(await DockerRunner.available(engine)).toBe(false);
    await expect(runner({ engine }).run(spec('true'))).rejects.toMatchObject({
      code: Code.UNAVAILABLE,
      message: expect.stringContaining(`the docker engine (unix://${engine.socketPath}) does not answer`),
    });
  });

  it('reaches the engine over TCP, from the options or from DOCKER_HOST, and over TLS', async () => {
    const plain = await engineProxy();
    const saved = process.env.DOCKER_HOST;
    try {
      const r = await runner({ engine: { host: '127.0.0.1', port: plain.port } }).run(spec('echo tcp'));
      expect([r.exitCode, await stdout()]).toEqual([0, 'tcp\n']);
      const viaOptions = plain.connections();
      expect(viaOptions).toBeGreaterThan(0);

      process.env.DOCKER_HOST = `tcp://127.0.0.1:${plain.port}`;
      const fromEnv = new DockerRunner({ labels: testLabel, pull: 'never' });
      expect((await fromEnv.run(spec('echo env'))).exitCode).toBe(0);
      expect(await stdout()).toBe('env\n');
      expect(plain.connections()).toBeGreaterThan(viaOptions);
    } finally {
      if (saved === undefined) delete process.env.DOCKER_HOST;
      else process.env.DOCKER_HOST = saved;
      await plain.close();
    }

    const pki = await makePki(dir);
    const tls = await engineProxy(pki);
    try {
      const engine = {
        host: '127.0.0.1',
        port: tls.port,
        ca: pki.ca,
        cert: pki.clientCert,
        key: pki.clientKey,
      };
      const r = await runner({ engine }).run(spec('echo tls'));
      expect([r.exitCode, await stdout()]).toEqual([0, 'tls\n']);
      expect(await DockerRunner.available(engine)).toBe(true);
      expect(await DockerRunner.available({ host: '127.0.0.1', port: tls.port, ca: pki.ca })).toBe(false);
      expect(await ours()).toEqual([]);
    } finally {
      await tls.close();
    }
  });

  it('streams output larger than any buffer into the files intact', async () => {
    const r = await runner().run(spec('seq 1 200000; seq 1 50000 >&2'));
    expect(r.exitCode).toBe(0);
    const out = await stdout();
    expect(out.length).toBe(1_288_895);
    expect(out.endsWith('199999\n200000\n')).toBe(true);
    expect((await stderr()).split('\n').length).toBe(50_001);
  });
});

describe('demultiplex', () => {
  const frame = (type: number, text: string) => {
    const payload = Buffer.from(text);
    const header = Buffer.alloc(8);
    header[0] = type;
    header.writeUInt32BE(payload.length, 4);
    return Buffer.concat([header, payload]);
  };
  const sink = () => {
    const parts: Buffer[] = [];
    return {
      parts,
      write: async (b: Buffer, offset = 0, length = b.length - offset) => {
        parts.push(Buffer.from(b.subarray(offset, offset + length)));
        return { bytesWritten: length, buffer: b };
      },
      text: () => Buffer.concat(parts).toString(),
    };
  };

  it('splits frames into stdout and stderr, whatever the chunk boundaries', async () => {
    const all = Buffer.concat([frame(1, 'out 1\n'), frame(2, 'err\n'), frame(1, ''), frame(1, 'out 2\n')]);
    for (const size of [1, 3, 7, 8, 9, all.length]) {
      const chunks: Buffer[] = [];
      for (let i = 0; i < all.length; i += size) chunks.push(all.subarray(i, i + size));
      const out = sink();
      const err = sink();
      await demultiplex(Readable.from(chunks), out as never, err as never);
      expect([out.text(), err.text()]).toEqual(['out 1\nout 2\n', 'err\n']);
    }
  });
});

/** A TCP (or, given certificates, mutual-TLS) front for the local engine's unix socket. */
async function engineProxy(
  pki?: Pki,
): Promise<{ port: number; connections: () => number; close: () => Promise<void> }> {
  let count = 0;
  const sockets = new Set<Socket>();
  const pipe = (client: Socket) => {
    count++;
    const engine = connect('/var/run/docker.sock');
    for (const s of [client, engine]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(engine).pipe(client);
  };
  const server = pki
    ? createTlsServer(
        { key: pki.serverKey, cert: pki.serverCert, ca: pki.ca, requestCert: true, rejectUnauthorized: true },
        pipe,
      )
    : createTcpServer(pipe);
  server.on('tlsClientError', () => undefined);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    connections: () => count,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

interface Pki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate, made with openssl. */
async function makePki(parent: string): Promise<Pki> {
  const d = join(parent, 'pki');
  await mkdir(d);
  const script = `
    set -e; cd "$1"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj /CN=remex-test-ca
    for who in server client; do
      openssl req -newkey rsa:2048 -nodes -keyout $who.key -out $who.csr -subj /CN=$who
    done
    printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' > server.ext
    printf 'extendedKeyUsage=clientAuth\n' > client.ext
    for who in server client; do
      openssl x509 -req -in $who.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 -out $who.pem -extfile $who.ext
    done`;
  await run('bash', ['-c', script, 'pki', d]);
  const read = (name: string) => readFile(join(d, name), 'utf8');
  return {
    ca: await read('ca.pem'),
    serverCert: await read('server.pem'),
    serverKey: await read('server.key'),
    clientCert: await read('client.pem'),
    clientKey: await read('client.key'),
  };
}
