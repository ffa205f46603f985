import type { ByteStreamServer, ReadResponse } from '../gen/google/bytestream/bytestream.js';
import type { Instances } from '../common/instances.js';
import { invalidArgument, notFound } from '../common/status.js';
import { clientStreaming, serverStreaming, unary } from '../server/handlers.js';
import type { Cas } from './cas.js';
import { readBlob } from './blob-reader.js';
import { parseReadResource, parseWriteResource } from './resource-name.js';
import type { UploadManager, WriteChunk } from './upload-manager.js';

const SERVICE = 'ByteStream';
/** Largest data field in one ReadResponse (clients accept 4 MiB messages by default). */
const READ_CHUNK = 1 << 20;

export function byteStreamService(cas: Cas, uploads: UploadManager, instances: Instances): ByteStreamServer {
  return {
    read: serverStreaming<{ resourceName: string; readOffset: number; readLimit: number }, ReadResponse>(
      `${SERVICE}/Read`,
      async (req, send, ctx) => {
        const { key, compressor } = parseReadResource(req.resourceName, instances);
        const request = {
          key,
          compressor,
          offset: req.readOffset,
          limit: req.readLimit,
          maxChunkBytes: READ_CHUNK,
        };
        for await (const data of readBlob(cas, request, ctx)) await send({ data });
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
