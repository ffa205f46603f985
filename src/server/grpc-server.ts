import {
  Server,
  ServerCredentials,
  type ServiceDefinition,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { addReflection } from './reflection.js';

/** One gRPC service to serve: its full name, its definition and its handlers. */
export interface ServiceEntry {
  name: string;
  definition: ServiceDefinition;
  implementation: UntypedServiceImplementation;
}

export interface GrpcServerOptions {
  /** host:port to bind (port 0: any free port). */
  listen: string;
  /** Largest message received or sent. */
  maxMessageBytes: number;
}

export interface GrpcServer {
  /** The address actually bound (with the real port when 0 was asked for). */
  address: string;
  port: number;
  /** Sets the grpc.health.v1 status of the named services. */
  setServing(names: readonly string[], serving: boolean): void;
  /** Refuses new calls, lets running ones finish for up to graceMs, then cuts them. */
  shutdown(graceMs: number): Promise<void>;
}

/**
 * The gRPC edge: one server with the given services, grpc.health.v1 (every service
 * SERVING until told otherwise) and server reflection, bound and listening.
 */
export async function serveGrpc(
  services: readonly ServiceEntry[],
  options: GrpcServerOptions,
): Promise<GrpcServer> {
  const server = new Server({
    'grpc.max_receive_message_length': options.maxMessageBytes,
    'grpc.max_send_message_length': options.maxMessageBytes,
    // Clients such as Bazel ping idle connections; accept that instead of answering GOAWAY.
    'grpc.http2.min_ping_interval_without_data_ms': 10_000,
    'grpc.keepalive_permit_without_calls': 1,
  });
  for (const s of services) server.addService(s.definition, s.implementation);
  const names = services.map((s) => s.name);
  const health = new HealthImplementation({
    '': 'SERVING',
    ...Object.fromEntries(names.map((name) => [name, 'SERVING' as const])),
  });
  health.addToServer(server);
  addReflection(server, names);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(options.listen, ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  const host = options.listen.slice(0, options.listen.lastIndexOf(':'));
  let stopping = false;
  return {
    address: `${host}:${port}`,
    port,
    setServing(which, serving) {
      if (stopping) return;
      for (const name of which) health.setStatus(name, serving ? 'SERVING' : 'NOT_SERVING');
    },
    async shutdown(graceMs) {
      stopping = true;
      for (const name of ['', ...names]) health.setStatus(name, 'NOT_SERVING');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    },
  };
}
