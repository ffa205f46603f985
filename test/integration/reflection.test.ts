/**
 * grpcurl-style use of the server through reflection alone.
 *
 * grpcurl is not installable here, so this test does what it does: it lists services over
 * the reflection protocol (v1, and v1alpha which grpcurl falls back to), fetches the file
 * descriptors of a service with file_containing_symbol, builds the message types from those
 * descriptors at run time, and calls methods with a JSON request, printing the answer as
 * proto JSON. No local .proto file or generated code is used for the calls themselves; the
 * only .proto loaded is the reflection protocol's own.
 */
import {
  Client,
  credentials,
  loadPackageDefinition,
  Metadata,
  type ClientDuplexStream,
  type GrpcObject,
  type ServiceClientConstructor,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import protobuf from 'protobufjs';
import descriptor from 'protobufjs/ext/descriptor/index.js';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

type ReflectionVersion = 'v1' | 'v1alpha';
type Json = Record<string, unknown>;

/** Per call; a reflection stream (one per describe block) may live for several calls. */
const DEADLINE_MS = 5_000;
const STREAM_DEADLINE_MS = 30_000;

const EXPECTED_SERVICES = [
  'build.bazel.remote.execution.v2.Capabilities',
  'build.bazel.remote.execution.v2.ContentAddressableStorage',
  'build.bazel.remote.execution.v2.ActionCache',
  'google.bytestream.ByteStream',
  'build.bazel.remote.asset.v1.Fetch',
  'build.bazel.remote.asset.v1.Push',
  'grpc.health.v1.Health',
];

// ---------------------------------------------------------------------------------------------
// Reflection client (the protocol's own .proto, shipped with @grpc/reflection)
// ---------------------------------------------------------------------------------------------

const reflectionProtoDir = join(
  dirname(createRequire(import.meta.url).resolve('@grpc/reflection/package.json')),
  'build/proto',
);

function reflectionClientConstructor(version: ReflectionVersion): ServiceClientConstructor {
  const definition = loadSync(join(reflectionProtoDir, `grpc/reflection/${version}/reflection.proto`), {
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const reflection = (loadPackageDefinition(definition).grpc as GrpcObject).reflection as GrpcObject;
  return (reflection[version] as GrpcObject).ServerReflection as ServiceClientConstructor;
}

interface ReflectionResponse {
  message_response?: string;
  list_services_response?: { service: { name: string }[] };
  file_descriptor_response?: { file_descriptor_proto: Buffer[] };
  error_response?: { error_code: number; error_message: string };
}

/** One ServerReflectionInfo stream; requests are answered in order, as the protocol says. */
class ReflectionSession {
  private readonly client: Client;
  private readonly stream: ClientDuplexStream<Json, ReflectionResponse>;
  private readonly waiting: { resolve(r: ReflectionResponse): void; reject(e: Error): void }[] = [];

  constructor(address: string, version: ReflectionVersion) {
    const Ctor = reflectionClientConstructor(version);
    this.client = new Ctor(address, credentials.createInsecure());
    const call = (this.client as unknown as Record<string, (...a: unknown[]) => unknown>)
      .ServerReflectionInfo as (
      m: Metadata,
      o: { deadline: number },
    ) => ClientDuplexStream<Json, ReflectionResponse>;
    this.stream = call.call(this.client, new Metadata(), { deadline: Date.now() + STREAM_DEADLINE_MS });
    this.stream.on('data', (r: ReflectionResponse) => this.waiting.shift()?.resolve(r));
    this.stream.on('error', (e: Error) => {
      for (const w of this.waiting.splice(0)) w.reject(e);
    });
  }

  private ask(request: Json): Promise<ReflectionResponse> {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.stream.write({ host: '', ...request });
    });
  }

  async listServices(): Promise<string[]> {
    const r = await this.ask({ list_services: '*' });
    expect(r.error_response).toBeUndefined();
    expect(r.message_response).toBe('list_services_response');
    return r.list_services_response!.service.map((s) => s.name);
  }

  /** Raw FileDescriptorProto bytes, or the reflection error. */
  async files(request: { file_containing_symbol: string } | { file_by_filename: string }) {
    const r = await this.ask(request);
    if (r.error_response) return { error: r.error_response };
    expect(r.message_response).toBe('file_descriptor_response');
    return { files: r.file_descriptor_response!.file_descriptor_proto.map((b) => new Uint8Array(b)) };
  }

  close(): void {
    this.stream.end();
    this.client.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Descriptors -> protobufjs types (what grpcurl does with protoreflect)
// ---------------------------------------------------------------------------------------------

interface FileDescriptorProto {
  name: string;
  package?: string;
  dependency?: string[];
  service?: { name: string; method?: { name: string; inputType: string; outputType: string }[] }[];
}

const decodeFile = (bytes: Uint8Array) =>
  descriptor.FileDescriptorProto.toObject(descriptor.FileDescriptorProto.decode(bytes), {
    arrays: true,
  }) as FileDescriptorProto;

// ext/descriptor adds Root.fromDescriptor at run time; its typings do not declare it.
const rootFromDescriptor = (files: FileDescriptorProto[]): protobuf.Root =>
  (protobuf.Root as unknown as { fromDescriptor(set: { file: unknown[] }): protobuf.Root }).fromDescriptor({
    file: files.map((f) => descriptor.FileDescriptorProto.fromObject(f as unknown as Json)),
  });

/**
 * Resolves a symbol like grpcurl: file_containing_symbol, then every import named in a
 * `dependency` list that the server has not already sent is asked for with file_by_filename.
 */
async function resolveSymbol(session: ReflectionSession, symbol: string) {
  const first = await session.files({ file_containing_symbol: symbol });
  expect(first.error, `file_containing_symbol ${symbol}`).toBeUndefined();
  const files = new Map<string, FileDescriptorProto>();
  for (const f of first.files!.map(decodeFile)) files.set(f.name, f);
  const main = decodeFile(first.files![0]!);
  const missing = [...files.values()].flatMap((f) => f.dependency ?? []).filter((d) => !files.has(d));
  while (missing.length > 0) {
    const name = missing.pop()!;
    if (files.has(name)) continue;
    const r = await session.files({ file_by_filename: name });
    expect(r.error, `file_by_filename ${name}`).toBeUndefined();
    for (const f of r.files!.map(decodeFile)) {
      if (files.has(f.name)) continue;
      files.set(f.name, f);
      missing.push(...(f.dependency ?? []));
    }
  }
  return { main, files: [...files.values()], root: rootFromDescriptor([...files.values()]) };
}

/**
 * Links a symbol's file the strict way grpcurl (jhump/protoreflect) and `buf curl` do: a file
 * sees only the types of the files named in its `dependency` list (transitively), each fetched
 * by name with file_by_filename when the server did not send it already. Throws when a
 * referenced type is not reachable that way, which is when those clients give up.
 */
async function linkStrictly(session: ReflectionSession, symbol: string): Promise<protobuf.Root> {
  const first = await session.files({ file_containing_symbol: symbol });
  expect(first.error, `file_containing_symbol ${symbol}`).toBeUndefined();
  const sent = new Map(first.files!.map(decodeFile).map((f) => [f.name, f] as const));
  const main = decodeFile(first.files![0]!);
  const closure = new Map<string, FileDescriptorProto>([[main.name, main]]);
  const toVisit = [...(main.dependency ?? [])];
  while (toVisit.length > 0) {
    const name = toVisit.pop()!;
    if (closure.has(name)) continue;
    let file = sent.get(name);
    if (!file) {
      const r = await session.files({ file_by_filename: name });
      if (r.error) throw new Error(`import ${name} of ${main.name}: ${r.error.error_message}`);
      file = decodeFile(r.files![0]!);
    }
    closure.set(name, file);
    toVisit.push(...(file.dependency ?? []));
  }
  return rootFromDescriptor([...closure.values()]);
}

/** `grpcurl describe <service>`-like text from the raw descriptor. */
function describeService(file: FileDescriptorProto, fullName: string): string {
  const service = file.service?.find(
    (s) => `${file.package ? `${file.package}.` : ''}${s.name}` === fullName,
  );
  if (!service) throw new Error(`${fullName} is not in ${file.name}`);
  const methods = (service.method ?? []).map(
    (m) => `  rpc ${m.name} ( ${m.inputType} ) returns ( ${m.outputType} );`,
  );
  return [`${fullName} is a service:`, `service ${service.name} {`, ...methods, '}'].join('\n');
}

/** `grpcurl describe <message>`-like text from the built type. */
function describeMessage(type: protobuf.Type): string {
  const fields = type.fieldsArray.map(
    (f) =>
      `  ${f.repeated ? 'repeated ' : ''}${f.resolvedType ? f.resolvedType.fullName : f.type} ${f.name} = ${f.id};`,
  );
  return [`message ${type.name} {`, ...fields, '}'].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Proto JSON <-> protobufjs messages (lowerCamelCase JSON names; original names accepted)
// ---------------------------------------------------------------------------------------------

const jsonName = (f: protobuf.Field) => protobuf.util.camelCase(f.name);

function fromProtoJson(type: protobuf.Type, json: Json): protobuf.Message {
  return type.fromObject(renameIn(type, json));
}

function renameIn(type: protobuf.Type, json: Json): Json {
  const out: Json = {};
  for (const [key, value] of Object.entries(json)) {
    const field = type.fieldsArray.find((f) => f.name === key || jsonName(f) === key);
    if (!field) throw new Error(`message type ${type.fullName} has no known field named ${key}`);
    const t = field.resolvedType;
    const convert = (v: unknown) => (t instanceof protobuf.Type ? renameIn(t, v as Json) : v);
    if (field.map) {
      out[field.name] = Object.fromEntries(Object.entries(value as Json).map(([k, v]) => [k, convert(v)]));
    } else out[field.name] = field.repeated ? (value as unknown[]).map(convert) : convert(value);
  }
  return out;
}

function toProtoJson(type: protobuf.Type, message: protobuf.Message): Json {
  const plain = type.toObject(message, { enums: String, longs: String, bytes: String });
  return renameOut(type, plain);
}

function renameOut(type: protobuf.Type, plain: Json): Json {
  const out: Json = {};
  for (const field of type.fieldsArray) {
    if (!(field.name in plain)) continue;
    const value = plain[field.name];
    const t = field.resolvedType;
    const convert = (v: unknown) => (t instanceof protobuf.Type ? renameOut(t, v as Json) : v);
    if (field.map) {
      out[jsonName(field)] = Object.fromEntries(
        Object.entries(value as Json).map(([k, v]) => [k, convert(v)]),
      );
    } else out[jsonName(field)] = field.repeated ? (value as unknown[]).map(convert) : convert(value);
  }
  return out;
}

/** `grpcurl -d '<json>' <address> <service>/<method>` with reflection-built types. */
async function invokeJson(
  address: string,
  root: protobuf.Root,
  service: string,
  method: string,
  requestJson: string,
): Promise<{ json: Json; text: string }> {
  const m = root.lookupService(service).methods[method];
  if (!m) throw new Error(`${service} has no method ${method}`);
  m.resolve();
  const requestType = m.resolvedRequestType!;
  const responseType = m.resolvedResponseType!;
  const request = fromProtoJson(requestType, JSON.parse(requestJson) as Json);
  const raw = new Client(address, credentials.createInsecure());
  try {
    const response = await new Promise<protobuf.Message>((resolve, reject) =>
      raw.makeUnaryRequest(
        `/${service}/${method}`,
        (msg: protobuf.Message) => Buffer.from(requestType.encode(msg).finish()),
        (buf: Buffer) => responseType.decode(buf),
        request,
        new Metadata(),
        { deadline: Date.now() + DEADLINE_MS },
        (err, value) => (err ? reject(err) : resolve(value!)),
      ),
    );
    const json = toProtoJson(responseType, response);
    return { json, text: JSON.stringify(json, null, 2) };
  } finally {
    raw.close();
  }
}

// ---------------------------------------------------------------------------------------------

let remex: RemexProcess;

beforeAll(async () => {
  remex = await startRemex();
});

afterAll(async () => {
  expect(await remex?.stop()).toBe(0);
});

describe.each<ReflectionVersion>(['v1', 'v1alpha'])('reflection %s', (version) => {
  it('lists the services (grpcurl list)', async () => {
    const session = new ReflectionSession(remex.address, version);
    try {
      const services = await session.listServices();
      expect(services).toEqual(expect.arrayContaining(EXPECTED_SERVICES));
      expect(new Set(services).size).toBe(services.length);
    } finally {
      session.close();
    }
  });

  it('answers file_containing_symbol with the file and its imports, and NOT_FOUND for unknown symbols', async () => {
    const session = new ReflectionSession(remex.address, version);
    try {
      const { main, files } = await resolveSymbol(session, 'build.bazel.remote.execution.v2.Capabilities');
      expect(main.package).toBe('build.bazel.remote.execution.v2');
      expect(main.service?.map((s) => s.name)).toContain('Capabilities');
      expect(files.length).toBeGreaterThan(1); // semver, google.protobuf, ... come along
      const missing = await session.files({ file_containing_symbol: 'no.such.Service' });
      expect(missing.error?.error_code).toBe(5); // NOT_FOUND
    } finally {
      session.close();
    }
  });
});

describe('grpcurl-style calls with JSON, types from reflection only', () => {
  let session: ReflectionSession;
  beforeAll(() => {
    session = new ReflectionSession(remex.address, 'v1');
  });
  afterAll(() => session?.close());

  it('describes Capabilities and calls GetCapabilities with {"instance_name": ""}', async () => {
    const service = 'build.bazel.remote.execution.v2.Capabilities';
    const { main, root } = await resolveSymbol(session, service);

    const description = describeService(main, service);
    expect(description).toContain(
      'rpc GetCapabilities ( .build.bazel.remote.execution.v2.GetCapabilitiesRequest ) returns ( .build.bazel.remote.execution.v2.ServerCapabilities );',
    );
    const method = root.lookupService(service).methods.GetCapabilities!;
    method.resolve();
    expect(method.resolvedRequestType!.fullName).toBe(
      '.build.bazel.remote.execution.v2.GetCapabilitiesRequest',
    );
    expect(method.resolvedResponseType!.fullName).toBe('.build.bazel.remote.execution.v2.ServerCapabilities');
    expect(describeMessage(method.resolvedRequestType!)).toContain('string instance_name = 1;');

    for (const body of ['{"instance_name": ""}', '{"instanceName": ""}']) {
      const { json, text } = await invokeJson(remex.address, root, service, 'GetCapabilities', body);
      const caps = json as {
        cacheCapabilities?: { digestFunctions?: string[] };
        highApiVersion?: { major?: number };
        lowApiVersion?: { major?: number };
      };
      expect(caps.cacheCapabilities?.digestFunctions).toContain('SHA256');
      expect(caps.highApiVersion?.major).toBe(2);
      expect(caps.lowApiVersion?.major).toBe(2);
      // Printed like grpcurl: lowerCamelCase JSON names, enum values by name.
      expect(text).toContain('"cacheCapabilities"');
      expect(text).toContain('"digestFunctions"');
      expect(text).toContain('"SHA256"');
      expect(text).not.toContain('cache_capabilities');
    }
  });

  it('rejects a JSON field the reflected request type does not have', async () => {
    const { root } = await resolveSymbol(session, 'build.bazel.remote.execution.v2.Capabilities');
    await expect(
      invokeJson(
        remex.address,
        root,
        'build.bazel.remote.execution.v2.Capabilities',
        'GetCapabilities',
        '{"nope": 1}',
      ),
    ).rejects.toThrow(/no known field named nope/);
  });

  it('calls grpc.health.v1.Health/Check with {} and gets SERVING', async () => {
    const service = 'grpc.health.v1.Health';
    const { main, root } = await resolveSymbol(session, service);
    expect(describeService(main, service)).toContain(
      'rpc Check ( .grpc.health.v1.HealthCheckRequest ) returns ( .grpc.health.v1.HealthCheckResponse );',
    );
    const overall = await invokeJson(remex.address, root, service, 'Check', '{}');
    expect(overall.json).toEqual({ status: 'SERVING' });
    const one = await invokeJson(
      remex.address,
      root,
      service,
      'Check',
      '{"service": "build.bazel.remote.execution.v2.Capabilities"}',
    );
    expect(one.json).toEqual({ status: 'SERVING' });
  });
});

describe('descriptors link the way grpcurl / buf curl link them (imports declared)', () => {
  let session: ReflectionSession;
  beforeAll(() => {
    session = new ReflectionSession(remex.address, 'v1');
  });
  afterAll(() => session?.close());

  it('links grpc.health.v1.Health (a file without imports)', async () => {
    const root = await linkStrictly(session, 'grpc.health.v1.Health');
    expect(root.lookupService('grpc.health.v1.Health').methods.Check).toBeDefined();
  });

  // grpcurl and `buf curl` build each file only from the files it declares as imports. The
  // server must therefore serve the generated descriptors file by file with their imports
  // (not descriptors rebuilt per package, which merge files and drop imports).
  it.each(['build.bazel.remote.execution.v2.Capabilities', 'build.bazel.remote.asset.v1.Fetch'])(
    'links %s from its file and declared imports only',
    async (symbol) => {
      const root = await linkStrictly(session, symbol);
      expect(root.lookupService(symbol)).toBeDefined();
    },
  );
});
