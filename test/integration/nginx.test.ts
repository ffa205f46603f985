/**
 * nginx/remex.conf in front of a real remex: a real nginx 1.22 (Debian's) started with
 * the shipped config and an upstreams.conf made from upstreams.example.conf, all three
 * roles pointing at one remex serving everything. Each limit the config lifts is shown
 * twice: through a minimal config (grpc_pass and nginx's defaults) the call fails with
 * the status recorded here, through ours it succeeds.
 *
 * The quiet-stream tests wait out nginx's 60 s grpc_read_timeout, so the tests of this
 * file run concurrently: the file takes about 70 s.
 */
import {
  Channel,
  connectivityState,
  credentials,
  loadPackageDefinition,
  Metadata,
  Server,
  ServerCredentials,
  status,
  type ChannelOptions,
  type Client,
  type ClientDuplexStream,
  type GrpcObject,
  type ServiceClientConstructor,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { randomBytes, randomUUID } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FetchService, PushService } from '../../src/gen/build/bazel/remote/asset/v1/remote_asset.js';
import {
  ActionCacheService,
  CapabilitiesClient,
  CapabilitiesService,
  ContentAddressableStorageService,
  ExecutionClient,
  GetActionResultRequest,
  RequestMetadata,
  ServerCapabilities,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { ReferenceStorageService, StatusRequest } from '../../src/gen/buildstream/v2/buildstream.js';
import { BotsService } from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';
import { ByteStreamService } from '../../src/gen/google/bytestream/bytestream.js';
import { ListOperationsRequest, OperationsService } from '../../src/gen/google/longrunning/operations.js';
import { HealthCheckResponse_ServingStatus, HealthService } from '../../src/gen/grpc/health/v1/health.js';
import { digestOf, errorOf, readBlob, writeBlob } from '../helpers/blobs.js';
import { clientsFor, executionClientsFor, unaryCall, type Clients } from '../helpers/clients.js';
import { collect, executeRequest, uploadAction, type OperationUpdate } from '../helpers/execution.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';
import { shippedConfig, upstreamsConf } from '../helpers/nginx.js';
import { freePort, startNginx, type Nginx } from '../helpers/services.js';

const OPTIONS: ChannelOptions = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
};
const MiB = 1 << 20;
const COMPLETED = 4;
/** Longer than nginx's default grpc_read_timeout of 60 s. */
const QUIET_SECONDS = 65;

/** What an operator writes first: grpc_pass and nothing else, every limit at nginx's default. */
function defaultConfig(upstream: string): string {
  return `
pid nginx.pid;
error_log stderr notice;
events {}
http {
    access_log off;
    server {
        listen 127.0.0.1:{{PORT}} http2;
        location / {
            grpc_pass grpc://${upstream};
        }
    }
}
`;
}

let remex: RemexProcess;
/** nginx with nginx/remex.conf. */
let ours: Nginx;
/** nginx with the minimal config. */
let plain: Nginx;
let c: Clients;

beforeAll(async () => {
  // keepalive 5m: an Execute stream says nothing between EXECUTING and COMPLETED, as a
  // WaitExecution behind a long keepalive does. Four local slots for the actions below.
  remex = await startRemex({ config: { execution: { keepalive: '5m' }, workers: { count: 4 } } });
  const roles = { execution: remex.address, cas: remex.address, actioncache: remex.address };
  ours = await startNginx(await shippedConfig(), undefined, { 'upstreams.conf': await upstreamsConf(roles) });
  plain = await startNginx(defaultConfig(remex.address));
  c = clientsFor(`127.0.0.1:${ours.port}`);
});

afterAll(async () => {
  c?.close();
  await ours?.stop();
  await plain?.stop();
  expect(await remex?.stop()).toBe(0);
});

const via = (n: Nginx) => `127.0.0.1:${n.port}`;

/** An action that sleeps for `seconds`, unique per call so that no two are merged or cached. */
async function sleepAction(seconds: number) {
  const { actionDigest } = await uploadAction(c, ['/bin/sleep', String(seconds)], {
    command: { environmentVariables: [{ name: 'NGINX_TEST_RUN', value: randomUUID() }] },
  });
  return actionDigest;
}

/** Runs Execute to the end; resolves to every update, or rejects with the stream's error. */
function execute(client: ExecutionClient, actionDigest: { hash: string; sizeBytes: number }) {
  let first: () => void;
  const started = new Promise<void>((r) => (first = r));
  const { done } = collect(client.execute(executeRequest({ actionDigest, skipCacheLookup: true })), () =>
    first(),
  );
  return { started, done };
}

/** Records every connectivity state a channel goes through until stop(). */
function watchStates(channel: Channel) {
  const states: connectivityState[] = [channel.getConnectivityState(false)];
  let stopped = false;
  const watch = () =>
    channel.watchConnectivityState(states.at(-1)!, Date.now() + 10 * 60_000, (err) => {
      if (stopped || err) return;
      states.push(channel.getConnectivityState(false));
      watch();
    });
  watch();
  return {
    states,
    stop: () => {
      stopped = true;
    },
  };
}

/**
 * An Execute stream of an action sleeping `seconds` and, while it is open, `calls`
 * GetCapabilities calls on the same client connection (one channel);
 * returns the stream's updates (or error), how the calls ended and the states the
 * channel went through from its first READY until the stream ended.
 */
async function manyCallsBesideALongStream(nginx: Nginx, calls: number, seconds = QUIET_SECONDS) {
  const address = via(nginx);
  const channel = new Channel(address, credentials.createInsecure(), OPTIONS);
  const caps = new CapabilitiesClient(address, credentials.createInsecure(), { channelOverride: channel });
  const exec = new ExecutionClient(address, credentials.createInsecure(), { channelOverride: channel });
  try {
    const getCaps = () => unaryCall(caps, CapabilitiesService.getCapabilities, { instanceName: '' });
    await getCaps();
    expect(channel.getConnectivityState(false)).toBe(connectivityState.READY);
    const watcher = watchStates(channel);
    const stream = execute(exec, await sleepAction(seconds));
    const ended = stream.done.then(
      (updates) => ({ updates, error: undefined }),
      (error: ServiceError) => ({ updates: undefined, error }),
    );
    await stream.started;
    const codes = new Map<number, number>();
    for (let i = 0; i < calls; i += 100) {
      const batch = Array.from({ length: Math.min(100, calls - i) }, () =>
        getCaps().then(
          () => status.OK,
          (err: ServiceError) => err.code,
        ),
      );
      for (const code of await Promise.all(batch)) codes.set(code, (codes.get(code) ?? 0) + 1);
    }
    const result = await ended;
    watcher.stop();
    return { ...result, codes: Object.fromEntries(codes), states: [...watcher.states] };
  } finally {
    caps.close();
    exec.close();
    channel.close();
  }
}

function lastOf(updates: OperationUpdate[]) {
  const last = updates.at(-1)!;
  return {
    done: last.done,
    stage: last.stage,
    code: last.response?.status?.code,
    exit: last.response?.result?.exitCode,
  };
}

describe.concurrent('remex behind nginx/remex.conf', () => {
  it('routes every service to remex', async ({ expect }) => {
    const x = executionClientsFor(via(ours));
    try {
      const caps = await unaryCall(c.capabilities, CapabilitiesService.getCapabilities, { instanceName: '' });
      expect(caps.executionCapabilities?.execEnabled).toBe(true);

      const blob = Buffer.from(`routed ${randomUUID()}`);
      const missing = await unaryCall(c.cas, ContentAddressableStorageService.findMissingBlobs, {
        instanceName: '',
        blobDigests: [digestOf(blob)],
        digestFunction: 0,
      });
      expect(missing.missingBlobDigests).toEqual([digestOf(blob)]);

      const resource = `blobs/${digestOf(blob).hash}/${blob.length}`;
      expect(await writeBlob(c, blob)).toBe(blob.length);
      expect(await readBlob(c, resource)).toEqual(blob);
      const written = await unaryCall(c.byteStream, ByteStreamService.queryWriteStatus, {
        resourceName: `uploads/${randomUUID()}/${resource}`,
      });
      expect(written).toMatchObject({ committedSize: blob.length, complete: true });

      const uri = `https://example.com/${randomUUID()}`;
      await unaryCall(c.push, PushService.pushBlob, {
        instanceName: '',
        uris: [uri],
        qualifiers: [],
        expireAt: undefined,
        blobDigest: digestOf(blob),
        referencesBlobs: [],
        referencesDirectories: [],
        digestFunction: 0,
      });
      const fetched = await unaryCall(c.fetch, FetchService.fetchBlob, {
        instanceName: '',
        timeout: undefined,
        oldestContentAccepted: undefined,
        uris: [uri],
        qualifiers: [],
        digestFunction: 0,
      });
      expect(fetched.blobDigest).toEqual(digestOf(blob));

      const notCached = await errorOf(
        unaryCall(
          c.actionCache,
          ActionCacheService.getActionResult,
          GetActionResultRequest.fromPartial({ actionDigest: digestOf(`no action ${randomUUID()}`) }),
        ),
      );
      expect(notCached.code).toBe(status.NOT_FOUND);

      const { actionDigest } = await uploadAction(c, ['/bin/true', randomUUID()]);
      const updates = await collect(x.execution.execute(executeRequest({ actionDigest }))).done;
      expect(lastOf(updates)).toEqual({ done: true, stage: COMPLETED, code: 0, exit: 0 });

      const listed = await unaryCall(
        x.operations,
        OperationsService.listOperations,
        ListOperationsRequest.fromPartial({ pageSize: 1000 }),
      );
      expect(listed.operations.map((o) => o.name)).toContain(updates[0]!.name);

      // An instance remex does not serve: remex's own INVALID_ARGUMENT proves the call got there.
      const bots = await errorOf(
        unaryCall(x.bots, BotsService.createBotSession, {
          parent: 'no-such-instance',
          botSession: undefined,
        }),
      );
      expect(bots.code).toBe(status.INVALID_ARGUMENT);
      expect(bots.details).toMatch(/unknown instance name "no-such-instance"/);

      const health = await unaryCall(c.capabilities as Client, HealthService.check, { service: '' });
      expect(health.status).toBe(HealthCheckResponse_ServingStatus.SERVING);

      expect(await listServicesByReflection(via(ours))).toEqual(
        expect.arrayContaining([
          'build.bazel.remote.execution.v2.Execution',
          'build.bazel.remote.execution.v2.ContentAddressableStorage',
          'grpc.health.v1.Health',
        ]),
      );

      // remex serves no BuildStream ReferenceStorage; the route reaches it, and grpc-js's
      // own UNIMPLEMENTED (naming the method) says so, not nginx's 404.
      const refs = await errorOf(
        unaryCall(c.cas as Client, ReferenceStorageService.status, StatusRequest.fromPartial({})),
      );
      expect(refs.code).toBe(status.UNIMPLEMENTED);
      expect(refs.details).toMatch(
        /does not implement the method \/buildstream\.v2\.ReferenceStorage\/Status/,
      );
    } finally {
      x.close();
    }
  });

  it('answers UNIMPLEMENTED for a service it does not route', async ({ expect }) => {
    const err = await errorOf(
      unaryCall(
        c.cas as Client,
        { ...HealthService.check, path: '/no.such.Service/Method' },
        { service: '' },
      ),
    );
    expect(err.code).toBe(status.UNIMPLEMENTED);
    expect(err.details).toBe('Received HTTP status code 404');
  });

  it('passes ByteStream uploads of 8 MiB and 64 MiB, which the default 1 MiB body limit refuses', async ({
    expect,
  }) => {
    const small = randomBytes(8 * MiB);
    const plainClients = clientsFor(via(plain));
    try {
      const refused = await errorOf(writeBlob(plainClients, small));
      // 413 Request Entity Too Large once the body passes 1 MiB; grpc-js maps the HTTP status.
      expect({ code: refused.code, details: refused.details }).toEqual({
        code: status.UNKNOWN,
        details: 'Received HTTP status code 413',
      });
    } finally {
      plainClients.close();
    }
    for (const data of [small, randomBytes(64 * MiB)]) {
      const d = digestOf(data);
      expect(await writeBlob(c, data, { chunk: MiB })).toBe(data.length);
      const back = await readBlob(c, `blobs/${d.hash}/${d.sizeBytes}`);
      expect(back.length).toBe(data.length);
      expect(back.equals(data)).toBe(true);
    }
  });

  it(`keeps an Execute stream that is silent for ${QUIET_SECONDS} s, with 1500 other calls on its connection`, async ({
    expect,
  }) => {
    const run = await manyCallsBesideALongStream(ours, 1500);
    expect(run.error).toBeUndefined();
    expect(lastOf(run.updates!)).toEqual({ done: true, stage: COMPLETED, code: 0, exit: 0 });
    expect(run.codes).toEqual({ [status.OK]: 1500 });
    // One connection throughout: nginx never sent GOAWAY.
    expect(run.states).toEqual([connectivityState.READY]);
  });

  it(`the default config cuts an Execute stream silent for ${QUIET_SECONDS} s (grpc_read_timeout 60 s)`, async ({
    expect,
  }) => {
    const x = new ExecutionClient(via(plain), credentials.createInsecure(), OPTIONS);
    try {
      const err = await errorOf(execute(x, await sleepAction(QUIET_SECONDS)).done);
      // nginx gives up on the silent upstream and resets the stream it already answered.
      expect({ code: err.code, details: err.details }).toEqual({
        code: status.INTERNAL,
        details: 'Received RST_STREAM with code 2 (Internal server error)',
      });
    } finally {
      x.close();
    }
  });

  it('the default config ends the client connection after 1000 calls (keepalive_requests)', async ({
    expect,
  }) => {
    // A 20 s stream, inside the default grpc_read_timeout, so only keepalive_requests acts.
    const run = await manyCallsBesideALongStream(plain, 1500, 20);
    // nginx sent GOAWAY on the 1000th stream: the channel dropped the connection and made
    // another. grpc-js replays calls that raced the GOAWAY and nginx lets the open stream
    // finish, so nothing fails here; grpc-java (Bazel) reports such calls as UNAVAILABLE
    // (grpc/grpc-java#8310, #10533).
    expect(run.states).toEqual([
      connectivityState.READY,
      connectivityState.IDLE,
      connectivityState.CONNECTING,
      connectivityState.READY,
    ]);
    expect(run.codes).toEqual({ [status.OK]: 1500 });
    expect(run.error).toBeUndefined();
    expect(lastOf(run.updates!)).toEqual({ done: true, stage: COMPLETED, code: 0, exit: 0 });
  });

  it('passes the RequestMetadata header unchanged, which the default config drops', async ({ expect }) => {
    const seen = await headerSeenUpstream(await shippedConfig(), true);
    const dropped = await headerSeenUpstream(defaultConfig('{{UPSTREAM}}'), false);
    expect(seen.sent.equals(seen.received!)).toBe(true);
    expect(dropped.received).toBeUndefined();
  });

  it('sends new calls to a live replica when another one is down', async ({ expect }) => {
    const dead = `127.0.0.1:${await freePort()}`;
    const both = `${dead}; server ${remex.address}`;
    const nginx = await startNginx(await shippedConfig(), undefined, {
      'upstreams.conf': await upstreamsConf({ execution: both, cas: both, actioncache: both }),
    });
    const clients = clientsFor(via(nginx));
    try {
      const codes = await Promise.all(
        Array.from({ length: 20 }, () =>
          unaryCall(clients.cas, ContentAddressableStorageService.findMissingBlobs, {
            instanceName: '',
            blobDigests: [],
            digestFunction: 0,
          }).then(
            () => status.OK,
            (err: ServiceError) => err.code,
          ),
        ),
      );
      expect(codes).toEqual(Array(20).fill(status.OK));
    } finally {
      clients.close();
      await nginx.stop();
    }
  });
});

/**
 * Sends a call carrying RequestMetadata through nginx to a gRPC server that records the
 * headers it receives (remex does not echo them), and returns what arrived.
 */
async function headerSeenUpstream(config: string, shipped: boolean) {
  const KEY = 'build.bazel.remote.execution.v2.requestmetadata-bin';
  let received: Buffer | undefined;
  const server = new Server();
  server.addService(CapabilitiesService, {
    getCapabilities: (call: { metadata: Metadata }, cb: (e: null, r: ServerCapabilities) => void) => {
      const value = call.metadata.get(KEY)[0];
      received = Buffer.isBuffer(value) ? value : undefined;
      cb(null, ServerCapabilities.fromPartial({}));
    },
  });
  const port = await new Promise<number>((res, rej) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (e, p) => (e ? rej(e) : res(p))),
  );
  const upstream = `127.0.0.1:${port}`;
  const nginx = shipped
    ? await startNginx(config, undefined, {
        'upstreams.conf': await upstreamsConf({ execution: upstream, cas: upstream, actioncache: upstream }),
      })
    : await startNginx(config.replaceAll('{{UPSTREAM}}', upstream));
  const client = new CapabilitiesClient(via(nginx), credentials.createInsecure());
  const sent = Buffer.from(
    RequestMetadata.encode(
      RequestMetadata.fromPartial({
        toolDetails: { toolName: 'bazel', toolVersion: '7.4.1' },
        actionId: 'a1',
        toolInvocationId: randomUUID(),
        correlatedInvocationsId: randomUUID(),
        actionMnemonic: 'CppCompile',
        targetId: '//foo:bar',
      }),
    ).finish(),
  );
  try {
    const metadata = new Metadata();
    metadata.set(KEY, sent);
    await new Promise<void>((res, rej) =>
      client.getCapabilities({ instanceName: '' }, metadata, (err) => (err ? rej(err) : res())),
    );
    return { sent, received };
  } finally {
    client.close();
    await nginx.stop();
    server.forceShutdown();
  }
}

interface ListServicesResponse {
  list_services_response?: { service: { name: string }[] };
}

/** ListServices over server reflection v1, as grpcurl's `list` does. */
async function listServicesByReflection(address: string): Promise<string[]> {
  const protoDir = join(
    dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')),
    'build/proto',
  );
  const definition = loadSync(join(protoDir, 'grpc/reflection/v1/reflection.proto'), { keepCase: true });
  const reflection = (loadPackageDefinition(definition).grpc as GrpcObject).reflection as GrpcObject;
  const Ctor = (reflection.v1 as GrpcObject).ServerReflection as ServiceClientConstructor;
  const client = new Ctor(address, credentials.createInsecure());
  try {
    return await new Promise<string[]>((res, rej) => {
      const open = client.ServerReflectionInfo as () => ClientDuplexStream<object, ListServicesResponse>;
      const stream = open.call(client);
      stream.on('data', (r: ListServicesResponse) => {
        res((r.list_services_response?.service ?? []).map((s) => s.name));
        stream.end();
      });
      stream.on('error', rej);
      stream.write({ host: '', list_services: '' });
    });
  } finally {
    client.close();
  }
}
