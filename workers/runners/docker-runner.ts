import { open, type FileHandle } from 'node:fs/promises';
import Docker from 'dockerode';
import { Code, RemexError } from '../../src/common/status.js';
import { setLongTimeout, type LongTimer } from '../../src/common/timers.js';
import type { RunResult, RunSpec, Runner } from './runner.js';

/** How the worker reaches the Docker engine. Unset: DOCKER_HOST (and DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), else /var/run/docker.sock. */
export type DockerEngineOptions =
  | { socketPath: string }
  | {
      host: string;
      port?: number | string;
      protocol?: 'http' | 'https';
      /** PEM contents (not paths) for TLS: the CA, and the client's certificate and key. */
      ca?: string | Buffer;
      cert?: string | Buffer;
      key?: string | Buffer;
    };

/** When the runner pulls an action's image: never, only when the engine lacks it, or before every action. */
export type PullPolicy = 'never' | 'if-missing' | 'always';

export interface DockerRunnerOptions {
  engine?: DockerEngineOptions;
  /** Default 'if-missing'. */
  pull?: PullPolicy;
  /** Whether an action may ask for the network (platform `network=on`); default false. */
  allowNetwork?: boolean;
  /** The Docker network of an action allowed the network; default 'bridge'. */
  networkMode?: string;
  /** User (uid:gid) the command runs as; default the worker's own, so it owns what the action writes. */
  user?: string;
  /** Run docker-init (tini) as PID 1 so the command gets signals and zombies are reaped; default true. */
  init?: boolean;
  /** Extra labels on every container, besides remex.action=1. */
  labels?: Record<string, string>;
  /** Told when a container could not be removed (the action's result stands). */
  onWarning?: (message: string) => void;
}

/** The label on every container this runner makes; `docker ps -a --filter label=remex.action=1` lists them. */
export const ACTION_LABEL = 'remex.action';

/** Platform properties the docker runner reads. */
export const IMAGE_PROPERTY = 'container-image';
const NETWORK_PROPERTY = 'network';
/** What Bazel's RBE platforms write for the network: standard | off. */
const RBE_NETWORK_PROPERTY = 'dockerNetwork';
/** An action's own pull policy (never | if-missing | always), over the runner's. */
const PULL_PROPERTY = 'docker-pull';
const PULL_POLICIES: readonly PullPolicy[] = ['never', 'if-missing', 'always'];
const CPUS_PROPERTY = 'cpus';
const MEMORY_PROPERTY = 'memory';

const NOT_FOUND_EXIT = 127;
const NOT_EXECUTABLE_EXIT = 126;
/** How long the output may trail the container's exit before the streams are cut. */
const OUTPUT_DRAIN_MS = 5000;

interface ContainerPlan {
  image: string;
  pull: PullPolicy;
  network: boolean;
  nanoCpus?: number;
  memoryBytes?: number;
}

/**
 * Runs each action in a fresh container of the image its `container-image` platform
 * property names (`docker://` prefix stripped, as Bazel's RBE platforms write it), made
 * through the Docker engine API (dockerode):
 * - the staged input root is bind-mounted at the same path inside, so the working
 *   directory and every host path of the RunSpec stay valid; the rest of the container's
 *   filesystem is the image's own and is thrown away with the container;
 * - the environment is the Command's: the image's variables are kept out, except PATH (the
 *   image's, else the engine's default) when the Command sets none, so that argv[0] can
 *   still be looked up; the engine always adds HOSTNAME, and runc adds HOME when unset;
 * - no network unless the action asks with `network=on` (or RBE's `dockerNetwork=standard`)
 *   and the operator allows it (`allowNetwork`); otherwise the action fails with
 *   FAILED_PRECONDITION;
 * - the image is pulled as the runner's pull policy says, or the action's `docker-pull`;
 * - `cpus` (e.g. 1.5) and `memory` (bytes, or 512m, 2g, 1GiB) become CPU and memory limits;
 * - stdout and stderr are streamed from the engine into their files as they come;
 * - on timeout or cancel the container is killed (SIGKILL reaches every process in it);
 * - the container is always removed afterwards, whatever happened.
 * Failures that are not the command's own become RemexErrors: INVALID_ARGUMENT for bad or
 * missing platform properties, FAILED_PRECONDITION for an image that cannot be had or a
 * request the engine or the operator refuses, UNAVAILABLE when the engine does not answer.
 */
export class DockerRunner implements Runner {
  private readonly docker: Docker;
  private readonly where: string;
  private readonly pulls = new Map<string, Promise<void>>();

  constructor(private readonly options: DockerRunnerOptions = {}) {
    this.docker = new Docker(engineConfig(options.engine));
    this.where = describeEngine(options.engine);
  }

  /** Whether a Docker engine answers a ping (within two seconds). */
  static async available(options?: DockerRunnerOptions | DockerEngineOptions): Promise<boolean> {
    const engine = options && ('socketPath' in options || 'host' in options) ? options : options?.engine;
    try {
      await new Docker({ ...engineConfig(engine), timeout: 2000 }).ping();
      return true;
    } catch {
      return false;
    }
  }

  async run(spec: RunSpec): Promise<RunResult> {
    const plan = this.plan(spec.platform);
    let startedAt = new Date();
    const cancelledResult = (): RunResult => ({
      exitCode: -1,
      timedOut: false,
      cancelled: true,
      startedAt,
      completedAt: new Date(),
    });
    const stdout = await open(spec.stdoutPath, 'w');
    const stderr = await open(spec.stderrPath, 'w');
    let container: Docker.Container | undefined;
    let stream: (NodeJS.ReadWriteStream & { destroy?: () => void }) | undefined;
    let output: Promise<void> | undefined;
    let started = false;
    let timedOut = false;
    let cancelled = false;
    let timer: LongTimer | undefined;
    const kill = () => {
      if (container && started) void killContainer(container);
    };
    const onAbort = () => {
      cancelled = true;
      kill();
    };
    spec.signal.addEventListener('abort', onAbort, { once: true });
    try {
      if (spec.signal.aborted) return cancelledResult();
      let imageEnv: string[];
      try {
        imageEnv = await this.imageEnv(plan.image, plan.pull, spec.signal);
      } catch (err) {
        if (spec.signal.aborted) return cancelledResult();
        throw err;
      }
      if (spec.signal.aborted) return cancelledResult();

      container = await this.engine('create a container', () =>
        this.docker.createContainer(this.containerOptions(spec, plan, imageEnv)),
      );
      if (spec.signal.aborted) return cancelledResult();
      stream = await this.engine('attach to the container', () =>
        container!.attach({ stream: true, stdout: true, stderr: true }),
      );
      output = demultiplex(stream, stdout, stderr);
      output.catch(() => undefined); // awaited below; never an unhandled rejection

      startedAt = new Date();
      try {
        await container.start();
      } catch (err) {
        await stopOutput(stream, output);
        const failed = startFailure(err, spec.argv[0] ?? '');
        if (!failed) throw this.engineError(err, 'start the container');
        await stderr.write(`remex worker: cannot run ${JSON.stringify(spec.argv[0])}: ${failed.reason}\n`);
        return {
          exitCode: failed.exitCode,
          timedOut: false,
          cancelled: false,
          startedAt,
          completedAt: new Date(),
        };
      }
      started = true;
      if (cancelled) kill();
      if (spec.timeoutMs !== undefined) {
        timer = setLongTimeout(() => {
          timedOut = true;
          kill();
        }, spec.timeoutMs);
      }
      const waited = (await this.engine('wait for the container', () => container!.wait())) as {
        StatusCode: number;
      };
      const completedAt = new Date();
      timer?.clear();
      // The streams end with the container; output still in flight is written first.
      await withDeadline(output, OUTPUT_DRAIN_MS, () => stream?.destroy?.());
      return {
        exitCode: waited.StatusCode,
        timedOut: timedOut && !cancelled,
        cancelled,
        startedAt,
        completedAt,
      };
    } finally {
      timer?.clear();
      spec.signal.removeEventListener('abort', onAbort);
      if (container) await this.remove(container);
      await stopOutput(stream, output);
      await stdout.close();
      await stderr.close();
    }
  }

  /** The action's container options from its platform properties; throws on bad ones. */
  private plan(platform: ReadonlyMap<string, string>): ContainerPlan {
    const raw = platform.get(IMAGE_PROPERTY)?.trim();
    if (!raw) {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `the docker runner needs the platform property ${IMAGE_PROPERTY} (e.g. docker://debian:12) to know which image to run the action in`,
      );
    }
    const image = raw.startsWith('docker://') ? raw.slice('docker://'.length) : raw;
    if (image === '' || /\s/.test(image)) {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `${IMAGE_PROPERTY} ${JSON.stringify(raw)} is not an image name`,
      );
    }

    const network = wantsNetwork(platform);
    if (network && !this.options.allowNetwork) {
      throw new RemexError(
        Code.FAILED_PRECONDITION,
        'the action asks for the network, which this worker does not allow for the docker runner (allowNetwork is off)',
      );
    }

    const pull = platform.get(PULL_PROPERTY) ?? this.options.pull ?? 'if-missing';
    if (!(PULL_POLICIES as readonly string[]).includes(pull)) {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `platform property ${PULL_PROPERTY}=${JSON.stringify(pull)}: expected ${PULL_POLICIES.join(', ')}`,
      );
    }
    const plan: ContainerPlan = { image, pull: pull as PullPolicy, network };
    const cpus = platform.get(CPUS_PROPERTY);
    if (cpus !== undefined) {
      const n = Number(cpus);
      if (cpus.trim() === '' || !Number.isFinite(n) || n <= 0) {
        throw new RemexError(
          Code.INVALID_ARGUMENT,
          `platform property ${CPUS_PROPERTY}=${JSON.stringify(cpus)} is not a positive number of CPUs`,
        );
      }
      plan.nanoCpus = Math.round(n * 1e9);
    }
    const memory = platform.get(MEMORY_PROPERTY);
    if (memory !== undefined) plan.memoryBytes = parseMemory(memory);
    return plan;
  }

  private containerOptions(
    spec: RunSpec,
    plan: ContainerPlan,
    imageEnv: readonly string[],
  ): Docker.ContainerCreateOptions {
    const env = Object.entries(spec.env).map(([name, value]) => `${name}=${value}`);
    // A name without '=' keeps the image's variable out: what the image sets is not the Command's.
    for (const name of new Set(imageEnv.map((e) => e.split('=', 1)[0]!))) {
      if (name !== '' && name !== 'PATH' && !Object.hasOwn(spec.env, name)) env.push(name);
    }
    const uid = process.getuid?.() ?? 0;
    const gid = process.getgid?.() ?? 0;
    return {
      Image: plan.image,
      Cmd: spec.argv,
      Entrypoint: [''], // the image's ENTRYPOINT would come before argv
      Env: env,
      WorkingDir: spec.cwd,
      User: this.options.user ?? `${uid}:${gid}`,
      Labels: { ...this.options.labels, [ACTION_LABEL]: '1' },
      AttachStdin: false,
      AttachStdout: true,
      AttachStderr: true,
      Tty: false,
      OpenStdin: false,
      HostConfig: {
        Mounts: [{ Type: 'bind', Source: spec.inputRoot, Target: spec.inputRoot, ReadOnly: false }],
        NetworkMode: plan.network ? (this.options.networkMode ?? 'bridge') : 'none',
        Init: this.options.init ?? true,
        AutoRemove: false,
        // Output goes to the files through attach only, not to the engine's disk as well.
        LogConfig: { Type: 'none', Config: {} },
        ...(plan.nanoCpus === undefined ? {} : { NanoCpus: plan.nanoCpus }),
        ...(plan.memoryBytes === undefined ? {} : { Memory: plan.memoryBytes, MemorySwap: plan.memoryBytes }),
      },
    };
  }

  /** Makes sure the engine has the image (as the pull policy says) and returns its environment. */
  private async imageEnv(image: string, policy: PullPolicy, signal: AbortSignal): Promise<string[]> {
    if (policy === 'always') await this.pull(image, signal);
    let info = await this.inspectImage(image);
    if (!info && policy === 'if-missing') {
      await this.pull(image, signal);
      info = await this.inspectImage(image);
    }
    if (!info) {
      throw new RemexError(
        Code.FAILED_PRECONDITION,
        policy === 'never'
          ? `image ${image} is not on the docker engine (${this.where}) and the pull policy is never: load or build it there first`
          : `image ${image} is still not on the docker engine (${this.where}) after pulling it`,
      );
    }
    return info.Config?.Env ?? [];
  }

  private async inspectImage(image: string): Promise<Docker.ImageInspectInfo | undefined> {
    try {
      return await this.docker.getImage(image).inspect();
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 404) return undefined;
      throw this.engineError(err, `inspect image ${image}`);
    }
  }

  /** Pulls the image; concurrent pulls of one image share one request. */
  private pull(image: string, signal: AbortSignal): Promise<void> {
    let pulling = this.pulls.get(image);
    if (!pulling) {
      pulling = this.pullOnce(image).finally(() => this.pulls.delete(image));
      this.pulls.set(image, pulling);
    }
    // A cancelled action stops waiting; the pull goes on for whoever else wants the image.
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => reject(new RemexError(Code.CANCELLED, `cancelled while pulling ${image}`));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      pulling.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
    });
  }

  private async pullOnce(image: string): Promise<void> {
    try {
      const stream = await this.docker.pull(image);
      await new Promise<void>((resolve, reject) => {
        this.docker.modem.followProgress(stream, (err: unknown) => (err ? reject(err) : resolve()));
      });
    } catch (err) {
      const engineDown = this.unreachable(err);
      if (engineDown) throw engineDown;
      throw new RemexError(
        Code.FAILED_PRECONDITION,
        `cannot pull image ${image} through the docker engine (${this.where}): ${engineMessage(err)}`,
        { cause: err },
      );
    }
  }

  private async remove(container: Docker.Container): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await container.remove({ force: true, v: true });
        return;
      } catch (err) {
        const status = (err as { statusCode?: number }).statusCode;
        if (status === 404) return; // already gone
        if (status === 409 && /already in progress/i.test(engineMessage(err))) return;
        if (attempt >= 2) {
          this.options.onWarning?.(
            `could not remove container ${container.id.slice(0, 12)} (label ${ACTION_LABEL}=1): ${engineMessage(err)}`,
          );
          return;
        }
        await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
      }
    }
  }

  /** Runs an engine call, turning its failure into a RemexError saying what was being done. */
  private async engine<T>(what: string, call: () => Promise<T>): Promise<T> {
    try {
      return await call();
    } catch (err) {
      throw this.engineError(err, what);
    }
  }

  private engineError(err: unknown, what: string): RemexError {
    if (err instanceof RemexError) return err;
    const down = this.unreachable(err);
    if (down) return down;
    const status = (err as { statusCode?: number }).statusCode;
    const code =
      status === 400
        ? Code.INVALID_ARGUMENT
        : status === 404 || status === 409
          ? Code.FAILED_PRECONDITION
          : Code.INTERNAL;
    return new RemexError(
      code,
      `the docker engine (${this.where}) could not ${what}: ${engineMessage(err)}`,
      { cause: err },
    );
  }

  private unreachable(err: unknown): RemexError | undefined {
    const errno = (err as NodeJS.ErrnoException).code;
    if (
      typeof errno === 'string' &&
      [
        'ECONNREFUSED',
        'ENOENT',
        'EACCES',
        'ECONNRESET',
        'EPIPE',
        'ETIMEDOUT',
        'EHOSTUNREACH',
        'ENOTFOUND',
      ].includes(errno)
    ) {
      return new RemexError(
        Code.UNAVAILABLE,
        `the docker engine (${this.where}) does not answer: ${(err as Error).message}`,
        { cause: err },
      );
    }
    return undefined;
  }
}

function engineConfig(engine: DockerEngineOptions | undefined): Docker.DockerOptions {
  if (!engine) return {};
  // Explicit settings replace everything docker-modem would take from DOCKER_HOST,
  // DOCKER_TLS_VERIFY and DOCKER_CERT_PATH underneath them.
  const none = {
    socketPath: undefined,
    host: undefined,
    port: undefined,
    ca: undefined,
    cert: undefined,
    key: undefined,
  };
  if ('socketPath' in engine) return { ...none, socketPath: engine.socketPath, protocol: 'http' };
  const protocol = tcpProtocol(engine);
  return {
    ...none,
    host: engine.host,
    port: engine.port ?? (protocol === 'https' ? 2376 : 2375),
    protocol,
    ca: engine.ca,
    cert: engine.cert,
    key: engine.key,
  };
}

function tcpProtocol(engine: {
  protocol?: 'http' | 'https';
  ca?: unknown;
  cert?: unknown;
}): 'http' | 'https' {
  return engine.protocol ?? (engine.ca || engine.cert ? 'https' : 'http');
}

function describeEngine(engine: DockerEngineOptions | undefined): string {
  if (!engine) {
    return process.env.DOCKER_HOST ? `DOCKER_HOST=${process.env.DOCKER_HOST}` : 'unix:///var/run/docker.sock';
  }
  if ('socketPath' in engine) return `unix://${engine.socketPath}`;
  const protocol = tcpProtocol(engine);
  return `${protocol}://${engine.host}:${engine.port ?? (protocol === 'https' ? 2376 : 2375)}`;
}

function wantsNetwork(platform: ReadonlyMap<string, string>): boolean {
  const network = platform.get(NETWORK_PROPERTY);
  const rbe = platform.get(RBE_NETWORK_PROPERTY);
  let on = false;
  if (network !== undefined) {
    if (network === 'on') on = true;
    else if (network !== 'off') {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `platform property ${NETWORK_PROPERTY}=${JSON.stringify(network)}: expected on or off`,
      );
    }
  }
  if (rbe !== undefined) {
    if (rbe === 'standard') on = true;
    else if (rbe !== 'off') {
      throw new RemexError(
        Code.INVALID_ARGUMENT,
        `platform property ${RBE_NETWORK_PROPERTY}=${JSON.stringify(rbe)}: expected standard or off`,
      );
    }
  }
  return on;
}

const MEMORY_UNITS: Record<string, number> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** Bytes from `memory`: a number of bytes, or with a unit as docker takes it (512m, 2g, 1GiB; all powers of 1024). */
export function parseMemory(value: string): number {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$/i.exec(value);
  const bytes = match ? Math.floor(Number(match[1]) * MEMORY_UNITS[match[2]!.toLowerCase()]!) : NaN;
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new RemexError(
      Code.INVALID_ARGUMENT,
      `platform property ${MEMORY_PROPERTY}=${JSON.stringify(value)} is not an amount of memory (e.g. 536870912, 512m, 2g)`,
    );
  }
  return bytes;
}

/**
 * A start that failed because argv[0] could not be executed (runc's words, without
 * docker-init), as `docker run` reports it: 127 not found, 126 not executable. Any other
 * start failure (docker-init itself missing, a bad mount) is the engine's, not the command's.
 */
function startFailure(err: unknown, program: string): { exitCode: number; reason: string } | undefined {
  const exec = /exec: .*/.exec(engineMessage(err))?.[0];
  if (!exec || !exec.startsWith(`exec: ${JSON.stringify(program)}`)) return undefined;
  const reason = exec.replace(/: unknown$/, '');
  if (/executable file not found|no such file or directory/i.test(exec))
    return { exitCode: NOT_FOUND_EXIT, reason };
  if (/permission denied|exec format error/i.test(exec)) return { exitCode: NOT_EXECUTABLE_EXIT, reason };
  return undefined;
}

/** The engine's own words for a failed call (its JSON body's message), else the error's message. */
function engineMessage(err: unknown): string {
  const json = (err as { json?: unknown }).json;
  if (json && typeof json === 'object' && typeof (json as { message?: unknown }).message === 'string') {
    return (json as { message: string }).message.trim();
  }
  if (typeof err === 'string') return err;
  return err instanceof Error ? err.message.trim() : String(err);
}

async function killContainer(container: Docker.Container): Promise<void> {
  try {
    await container.kill({ signal: 'SIGKILL' });
  } catch {
    // Not running any more (409) or gone (404): nothing to kill. Removal forces it anyway.
  }
}

/**
 * Splits the engine's multiplexed attach stream (frames of an 8-byte header: stream type,
 * 3 zero bytes, big-endian payload length) into the stdout and stderr files, writing each
 * payload as it arrives and reading on only once it is written.
 */
export async function demultiplex(
  source: AsyncIterable<Buffer | string> | NodeJS.ReadableStream,
  stdout: Pick<FileHandle, 'write'>,
  stderr: Pick<FileHandle, 'write'>,
): Promise<void> {
  const header = Buffer.alloc(8);
  let headerFill = 0;
  let remaining = 0;
  let target = stdout;
  for await (const piece of source as AsyncIterable<Buffer | string>) {
    const chunk = typeof piece === 'string' ? Buffer.from(piece) : piece;
    let offset = 0;
    while (offset < chunk.length) {
      if (remaining === 0) {
        const n = Math.min(8 - headerFill, chunk.length - offset);
        chunk.copy(header, headerFill, offset, offset + n);
        headerFill += n;
        offset += n;
        if (headerFill < 8) break;
        headerFill = 0;
        remaining = header.readUInt32BE(4);
        target = header[0] === 2 ? stderr : stdout;
        continue;
      }
      const n = Math.min(remaining, chunk.length - offset);
      await writeAll(target, chunk.subarray(offset, offset + n));
      offset += n;
      remaining -= n;
    }
  }
}

async function writeAll(file: Pick<FileHandle, 'write'>, data: Buffer): Promise<void> {
  let written = 0;
  while (written < data.length) {
    const { bytesWritten } = await file.write(data, written, data.length - written);
    written += bytesWritten;
  }
}

/** Cuts the attach stream and waits for the writes already started, before the files close. */
async function stopOutput(
  stream: { destroy?: () => void } | undefined,
  output: Promise<void> | undefined,
): Promise<void> {
  stream?.destroy?.();
  if (output) await withDeadline(output, OUTPUT_DRAIN_MS, () => undefined);
}

/** Waits for the promise, or calls onLate and stops waiting after ms (its rejection is ignored). */
async function withDeadline(promise: Promise<void>, ms: number, onLate: () => void): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      onLate();
      resolve();
    }, ms);
  });
  try {
    await Promise.race([promise.catch(() => undefined), late]);
  } finally {
    clearTimeout(timer);
  }
}
