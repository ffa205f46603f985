import type { ByteStreamServer, ReadResponse } from '../gen/google/bytestream/bytestream.js';
import type { Instances } from '../common/instances.js';
import { invalidArgument, notFound, outOfRange } from '../common/status.js';
import { clientStreaming, serverStreaming, unary } from '../server/handlers.js';
import type { Cas } from './cas.js';
import { CompressorValue, zstdCompressStream } from './compression.js';
import { parseReadResource, parseWriteResource } from './resource-name.js';
import type { UploadManager, WriteChunk } from './upload-manager.js';
import { describeKey } from './blob-store.js';

const SERVICE = 'ByteStream';
/** Largest data field in one ReadResponse (clients accept 4 MiB messages by default). */
const READ_CHUNK = 1 << 20;

export function byteStreamService(cas: Cas, uploads: UploadManager, instances: Instances): ByteStreamServer {
  return {
    read: serverStreaming<{ resourceName: string; readOffset: number; readLimit: number }, ReadResponse>(
      `${SERVICE}/Read`,
      async (req, send, ctx) => {
        const resource = parseReadResource(req.resourceName, instances);
        const { key } = resource;
        if (req.readOffset < 0) throw outOfRange(`read_offset ${req.readOffset} is negative`);
        if (req.readLimit < 0) throw invalidArgument(`read_limit ${req.readLimit} is negative`);
        let source;
        if (resource.compressor === CompressorValue.IDENTITY) {
          if (req.readOffset > key.sizeBytes) {
            throw outOfRange(`read_offset ${req.readOffset} is past the end of ${describeKey(key)}`);
          }
          source = await cas.read(key, { offset: req.readOffset, limit: req.readLimit }, ctx);
        } else {
          // Offsets and limits count compressed bytes: compress from the start and skip.
          source = (await cas.read(key, undefined, ctx)).pipe(zstdCompressStream());
        }
        let skip = resource.compressor === CompressorValue.IDENTITY ? 0 : req.readOffset;
        let left =
          resource.compressor === CompressorValue.IDENTITY || req.readLimit === 0 ? Infinity : req.readLimit;
        try {
          for await (const piece of source) {
            let chunk = piece as Buffer;
            if (skip > 0) {
              const n = Math.min(skip, chunk.length);
              chunk = chunk.subarray(n);
              skip -= n;
            }
            if (chunk.length > left) chunk = chunk.subarray(0, left);
            left -= chunk.length;
            for (let i = 0; i < chunk.length; i += READ_CHUNK) {
              await send({ data: chunk.subarray(i, i + READ_CHUNK) });
            }
            if (left <= 0) break;
          }
        } finally {
          source.destroy();
        }
        if (skip > 0)
          throw outOfRange(`read_offset ${req.readOffset} is past the end of the compressed blob`);
      },
    ),

    write: clientStreaming(`${SERVICE}/Write`, async (requests, ctx) => {
      const iterator = requests[Symbol.asyncIterator]();
      const firstResult = await iterator.next();
      if (firstResult.done) throw invalidArgument('Write stream carried no request');
      const first = firstResult.value as WriteChunk & { resourceName: string };
      if (first.resourceName === '') throw invalidArgument('the first WriteRequest must name the resource');
      const resource = parseWriteResource(first.resourceName, instances);
      // Later requests may repeat the resource name (BuildStream does) but must not change it.
      const rest: AsyncIterator<WriteChunk> = {
        next: async () => {
          const r = await iterator.next();
          if (!r.done) {
            const name = (r.value as { resourceName: string }).resourceName;
            if (name !== '' && name !== first.resourceName) {
              throw invalidArgument(
                `resource_name changed within one Write stream to "${name.slice(0, 200)}"`,
              );
            }
          }
          return r as IteratorResult<WriteChunk>;
        },
      };
      const committedSize = await uploads.write(resource, first, rest, ctx);
      return { committedSize };
    }),

    queryWriteStatus: unary(`${SERVICE}/QueryWriteStatus`, async (req, ctx) => {
      const resource = parseWriteResource(req.resourceName, instances);
      const state = await uploads.status(resource, ctx);
      if (!state) throw notFound(`no upload ${req.resourceName} is in progress or complete`);
      return state;
    }),
  };
}
