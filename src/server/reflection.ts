import type { Server } from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import { readFileSync } from 'node:fs';

/**
 * Server reflection (v1 and v1alpha), for grpcurl. It is given the generated file
 * descriptors as they are, one per .proto file with its imports, so that clients can
 * resolve every type file by file (a package definition rebuilt by proto-loader would
 * merge files per package and drop the imports, which grpcurl cannot use).
 */
export function addReflection(server: Server, serviceNames: string[]): void {
  const files = fileDescriptorProtos(readFileSync(new URL('../gen/descriptors.binpb', import.meta.url)));
  const definition = { remex: { format: '', type: {}, fileDescriptorProtos: files } };
  new ReflectionService(definition as never, {
    services: [...serviceNames, 'grpc.health.v1.Health'],
  }).addToServer(server);
}

/** The serialized FileDescriptorProtos of a FileDescriptorSet (field 1, repeated bytes), unchanged. */
export function fileDescriptorProtos(set: Buffer): Buffer[] {
  const files: Buffer[] = [];
  let pos = 0;
  const varint = (): number => {
    let result = 0;
    let shift = 0;
    for (;;) {
      const byte = set[pos++];
      if (byte === undefined) throw new Error('truncated FileDescriptorSet');
      result += (byte & 0x7f) * 2 ** shift;
      if (byte < 0x80) return result;
      shift += 7;
    }
  };
  while (pos < set.length) {
    const tag = varint();
    if (tag !== 0x0a) throw new Error(`unexpected field tag ${tag} in FileDescriptorSet`);
    const length = varint();
    files.push(set.subarray(pos, pos + length));
    pos += length;
  }
  return files;
}
