import { readFile } from 'node:fs/promises';
import { availableParallelism, homedir } from 'node:os';
import { join, resolve, sep } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { ConfigError } from '../common/config-error.js';

const UNITS: Record<string, number> = {
  b: 1,
  kb: 1e3,
  mb: 1e6,
  gb: 1e9,
  tb: 1e12,
  kib: 2 ** 10,
  mib: 2 ** 20,
  gib: 2 ** 30,
  tib: 2 ** 40,
};

/** A byte size: a number, or a string such as "512MiB", "10GiB", "4MB". */
const size = z.union([z.number().int().nonnegative(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$/.exec(v);
  const factor = m ? UNITS[(m[2] || 'b').toLowerCase()] : undefined;
  if (!m || factor === undefined) {
    ctx.addIssue({ code: 'custom', message: `"${v}" is not a size (examples: 1048576, "512MiB", "10GiB")` });
    return z.NEVER;
  }
  return Math.floor(Number(m[1]) * factor);
});

/** A duration: milliseconds, or a string such as "30s", "10m", "2h". */
const duration = z.union([z.number().nonnegative(), z.string()]).transform((v, ctx) => {
  if (typeof v === 'number') return v;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$/.exec(v);
  const factor = m ? { ms: 1, s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2] as 'ms'] : undefined;
  if (!m || factor === undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `"${v}" is not a duration (examples: "500ms", "30s", "10m", "2h")`,
    });
    return z.NEVER;
  }
  return Number(m[1]) * factor;
});

const memoryStore = z.strictObject({ type: z.literal('memory'), maxSize: size });
const diskStore = z.strictObject({
  type: z.literal('disk'),
  /** Relative paths are resolved against dataDir. */
  path: z.string().min(1),
  maxSize: size,
  fsync: z.boolean().default(false),
});
const s3Store = z.strictObject({
  type: z.literal('s3'),
  bucket: z.string().min(1),
  /** Prepended to every object key, e.g. "cas/". */
  prefix: z.string().default(''),
  region: z.string().default('us-east-1'),
  /** For S3-compatible servers (MinIO, Ceph, s3rver): their URL. Omit for AWS. */
  endpoint: z.string().url().optional(),
  /** Path-style requests (http://host/bucket/key), which S3-compatible servers need. */
  forcePathStyle: z.boolean().default(false),
  /** Static credentials; omitted, the AWS SDK's default chain (AWS_ACCESS_KEY_ID, …) is used. */
  accessKeyId: z.string().optional(),
  secretAccessKey: z.string().optional(),
  /** Blobs larger than this are uploaded in parts of this size (streamed multipart upload). */
  partSize: size.default(16 * 2 ** 20),
});
const postgresConnection = z.strictObject({
  type: z.literal('postgres'),
  /** postgres://user:password@host:port/database */
  url: z.string().min(1),
  poolSize: z.number().int().min(1).default(10),
});

type Size = z.input<typeof size>;
type Duration = z.input<typeof duration>;

/** A CAS storage node: a backend, or a behaviour composed over child nodes. */
export type BlobStoreConfig =
  | z.output<typeof memoryStore>
  | z.output<typeof diskStore>
  | z.output<typeof s3Store>
  | {
      type: 'indexed';
      index: z.output<typeof postgresConnection>;
      confirmAfter: number;
      backend: BlobStoreConfig;
    }
  | { type: 'sizePartitioning'; threshold: number; small: BlobStoreConfig; large: BlobStoreConfig }
  | { type: 'tiered'; fast: BlobStoreConfig; slow: BlobStoreConfig }
  | { type: 'existenceCaching'; ttl: number; maxEntries: number; backend: BlobStoreConfig };
type BlobStoreInput =
  | z.input<typeof memoryStore>
  | z.input<typeof diskStore>
  | z.input<typeof s3Store>
  | {
      type: 'indexed';
      index: z.input<typeof postgresConnection>;
      confirmAfter?: Duration;
      backend: BlobStoreInput;
    }
  | { type: 'sizePartitioning'; threshold: Size; small: BlobStoreInput; large: BlobStoreInput }
  | { type: 'tiered'; fast: BlobStoreInput; slow: BlobStoreInput }
  | { type: 'existenceCaching'; ttl?: Duration; maxEntries?: number; backend: BlobStoreInput };

/**
 * CAS backends and behaviours: a tagged union on `type`, recursive through the
 * behaviours' children, mirrored by createBlobStore().
 */
export const blobStoreSchema: z.ZodType<BlobStoreConfig, BlobStoreInput> = z.lazy(() =>
  z.discriminatedUnion('type', [
    memoryStore,
    diskStore,
    s3Store,
    z.strictObject({
      type: z.literal('indexed'),
      /** Where FindMissingBlobs looks first (the backend stays the source of truth). */
      index: postgresConnection,
      /** An index entry confirmed longer ago than this is checked against the backend before it is reported present. */
      confirmAfter: duration.default(0),
      backend: blobStoreSchema,
    }),
    z.strictObject({
      type: z.literal('sizePartitioning'),
      /** Blobs of at most this many bytes go to `small`, larger ones to `large`. */
      threshold: size,
      small: blobStoreSchema,
      large: blobStoreSchema,
    }),
    z.strictObject({ type: z.literal('tiered'), fast: blobStoreSchema, slow: blobStoreSchema }),
    z.strictObject({
      type: z.literal('existenceCaching'),
      ttl: duration.default(60_000),
      maxEntries: z.number().int().min(1).default(1_000_000),
      backend: blobStoreSchema,
    }),
  ]),
);

const redisStore = z.strictObject({
  type: z.literal('redis'),
  /** redis://[:password@]host:port[/db] */
  url: z.string().min(1),
  keyPrefix: z.string().default(''),
  /** Entries expire this long after they were written; 0 keeps them until Redis evicts them. */
  ttl: duration.default(0),
});

/** ActionCache and asset-index backends, mirrored by createKeyValueStore(). */
export const kvStoreSchema = z.discriminatedUnion('type', [
  memoryStore,
  diskStore.omit({ fsync: true }),
  redisStore,
]);
export type KeyValueStoreConfig = z.infer<typeof kvStoreSchema>;

/** The services a process can serve, by role. Capabilities and health are always served. */
export const ROLES = ['execution', 'cas', 'actioncache'] as const;
export type Role = (typeof ROLES)[number];

export const configSchema = z.strictObject({
  /** host:port to listen on. */
  listen: z.string().default('127.0.0.1:50051'),
  /**
   * The roles this process serves: execution (Execution, Operations, Bots), cas (CAS,
   * ByteStream, Remote Asset) and actioncache. Capabilities and health are always served.
   */
  services: z
    .array(z.enum(ROLES))
    .min(1)
    .refine((a) => new Set(a).size === a.length, 'a role is named twice')
    .default([...ROLES]),
  /** Instance names served; requests naming any other are INVALID_ARGUMENT. */
  instanceNames: z.array(z.string()).min(1).default(['']),
  /** Base directory for relative store paths. Default: $XDG_CACHE_HOME/remex or ~/.cache/remex. */
  dataDir: z.string().optional(),
  cas: blobStoreSchema.default({ type: 'disk', path: 'cas', maxSize: 10 * 2 ** 30, fsync: false }),
  actionCache: kvStoreSchema.default({ type: 'disk', path: 'ac', maxSize: 2 ** 30 }),
  assets: kvStoreSchema.default({ type: 'disk', path: 'assets', maxSize: 256 * 2 ** 20 }),
  /** Largest total blob bytes in one BatchUpdateBlobs / BatchReadBlobs call. */
  maxBatchTotalSizeBytes: size.default(4 * 2 ** 20),
  /** Whether clients may write action results (Bazel's --remote_upload_local_results). */
  actionCacheUpdates: z.boolean().default(true),
  /** Largest total inlined into one GetActionResult answer (inline_stdout etc.). */
  maxInlineBytes: size.default(2 ** 20),
  uploads: z
    .strictObject({
      /** Spool for ByteStream uploads in progress (relative to dataDir); keep it on the CAS filesystem. */
      path: z.string().default('uploads'),
      /** How long an interrupted upload is kept so the client can resume it. */
      idleTimeout: duration.default(10 * 60 * 1000),
    })
    .default({ path: 'uploads', idleTimeout: 10 * 60 * 1000 }),
  execution: z
    .strictObject({
      /** Serve Execution, Operations and Bots (remote execution). */
      enabled: z.boolean().default(true),
      /** Accepted ExecutionPolicy.priority range; lower values run sooner. */
      minPriority: z.number().int().default(-1000),
      maxPriority: z.number().int().default(1000),
      /** An unchanged operation is re-sent on Execute/WaitExecution streams this often. */
      keepalive: duration.default(30_000),
      /** A bot not heard from for this long is dropped; its action runs elsewhere. */
      botSessionTimeout: duration.default(60_000),
      /** Longest a bot's UpdateBotSession is held waiting for work. */
      botPoll: duration.default(30_000),
      /** Times an action may lose its worker before it fails with UNAVAILABLE. */
      maxAttempts: z.number().int().min(1).default(3),
      /** An action no connected worker can run fails with FAILED_PRECONDITION after this long. */
      unschedulableTimeout: duration.default(60_000),
      /** Finished operations stay visible to WaitExecution / GetOperation this long. */
      completedRetention: duration.default(10 * 60_000),
      /**
       * How platform properties are matched, by name, over the defaults (cpus and memory:
       * minimum; network, container-image, chrootRootDigest, docker-pull: option; others exact).
       */
      propertyTypes: z.record(z.string(), z.enum(['exact', 'minimum', 'option'])).default({}),
      /**
       * Where the queue and operations live: memory (this process only) or postgres
       * (durable, shared by every replica of the execution role).
       */
      scheduler: z
        .discriminatedUnion('type', [z.strictObject({ type: z.literal('memory') }), postgresConnection])
        .default({ type: 'memory' }),
    })
    .prefault({}),
  /** Workers started inside `remex serve`, talking to it over loopback (the embedded default). */
  workers: z
    .strictObject({
      /** How many actions run at once on this machine; 0 starts no local worker. Default: CPU count. */
      count: z.number().int().min(0).default(availableParallelism()),
      /** Extra worker properties ("key=value"), beyond OSFamily and ISA of this host. */
      properties: z.array(z.string().regex(/^[^=]+=.*$/, 'expected "key=value"')).default([]),
      /** Working directory for staged inputs and the local blob cache (relative to dataDir). */
      workDir: z.string().default('workers'),
      /** Runners to offer (hosttools, bubblewrap, userchroot, docker); default: every one that works here. */
      runners: z.array(z.string()).optional(),
      /** Runner for actions that name none (platform property `runner`). */
      defaultRunner: z.string().default('hosttools'),
      /** Whether sandboxed runners may give an action the network when it asks with network=on. */
      allowNetwork: z.boolean().default(false),
    })
    .prefault({}),
  /** Prometheus metrics of every storage node, served over HTTP at /metrics. */
  metrics: z
    .strictObject({
      /** host:port for the metrics endpoint; omitted, metrics are not served. */
      listen: z.string().optional(),
    })
    .prefault({}),
  /** Time given to in-flight calls at SIGTERM before they are cut. */
  shutdownGrace: duration.default(10_000),
});

export type Config = z.infer<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;

export { ConfigError };

/** Validates a parsed config; errors name the path of the bad field. */
export function parseConfig(raw: unknown, source = 'config'): Config {
  const result = configSchema.safeParse(raw ?? {});
  if (!result.success) {
    const lines = result.error.issues.map((i) => {
      const path = i.path.length > 0 ? i.path.join('.') : '(top level)';
      return `  ${path}: ${i.message}`;
    });
    throw new ConfigError(`invalid ${source}:\n${lines.join('\n')}`);
  }
  return result.data;
}

export async function loadConfig(file: string | undefined): Promise<Config> {
  if (!file) return parseConfig({});
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new ConfigError(`cannot read config file ${file}: ${(err as Error).message}`);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`config file ${file} is not valid YAML: ${(err as Error).message}`);
  }
  return parseConfig(raw, `config file ${file}`);
}

export function defaultDataDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'remex');
}

export function resolvePath(config: Config, path: string): string {
  return resolve(config.dataDir ?? defaultDataDir(), path);
}

/**
 * The ByteStream upload spool, resolved. Start-up clears the spool, so it must be a
 * directory of its own: not the data directory or one above it (`""`, `.`, `..`, `/`),
 * and not a disk store's or the workers' directory, nor above or inside one.
 */
export function uploadsDir(config: Config): string {
  const dataDir = resolve(config.dataDir ?? defaultDataDir());
  const spool = resolvePath(config, config.uploads.path);
  const fix = 'give it a directory of its own, e.g. "uploads" (the default)';
  if (within(dataDir, spool)) {
    throw new ConfigError(
      `uploads.path ${JSON.stringify(config.uploads.path)} resolves to ${spool}, ${spool === dataDir ? 'the data directory itself' : `which holds the data directory ${dataDir}`}; the spool is cleared at start-up: ${fix}`,
    );
  }
  const others: [string, string][] = diskPaths(config).map(([where, path]) => [
    where,
    resolvePath(config, path),
  ]);
  others.push(['workers.workDir', resolvePath(config, config.workers.workDir)]);
  for (const [where, path] of others) {
    if (within(path, spool) || within(spool, path)) {
      throw new ConfigError(
        `uploads.path ${JSON.stringify(config.uploads.path)} resolves to ${spool}, which overlaps ${where} (${path}); the spool is cleared at start-up: ${fix}`,
      );
    }
  }
  return spool;
}

/** Whether path is dir or lies below it (both absolute and normalised). */
function within(path: string, dir: string): boolean {
  return path === dir || path.startsWith(dir.endsWith(sep) ? dir : dir + sep);
}

/** The path of every disk store in the config, with where it is configured. */
function diskPaths(config: Config): [string, string][] {
  const found: [string, string][] = [];
  const walk = (node: unknown, where: string) => {
    if (typeof node !== 'object' || node === null) return;
    const o = node as Record<string, unknown>;
    if (o.type === 'disk' && typeof o.path === 'string') found.push([`${where}.path`, o.path]);
    for (const [k, v] of Object.entries(o)) walk(v, `${where}.${k}`);
  };
  walk(config.cas, 'cas');
  walk(config.actionCache, 'actionCache');
  walk(config.assets, 'assets');
  return found;
}
