import type {
  ContentAddressableStorageServer,
  Directory,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { resolveDigestFunction, validateDigest } from '../common/digest.js';
import type { Instances } from '../common/instances.js';
import { Code, invalidArgument, notFound, unimplemented } from '../common/status.js';
import { serverStreaming, unary } from '../server/handlers.js';
import type { Cas } from './cas.js';
import { walkTree } from './tree-walker.js';

const SERVICE = 'ContentAddressableStorage';
const DEFAULT_TREE_PAGE = 1000;
// A GetTree response stays well under gRPC's default 4 MiB message limit.
const TREE_PAGE_BYTES = 2 << 20;

const status = (code: Code, message: string) => ({ code, message, details: [] });

export function casService(cas: Cas, instances: Instances): ContentAddressableStorageServer {
  return {
    findMissingBlobs: unary(`${SERVICE}/FindMissingBlobs`, async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.blobDigests[0]?.hash);
      return { missingBlobDigests: await cas.findMissing(fn, req.blobDigests, ctx) };
    }),

    batchUpdateBlobs: unary(`${SERVICE}/BatchUpdateBlobs`, async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.requests[0]?.digest?.hash);
      const results = await cas.batchUpdate(fn, req.requests, ctx);
      return { responses: results.map((r) => ({ digest: r.digest, status: status(r.code, r.message) })) };
    }),

    batchReadBlobs: unary(`${SERVICE}/BatchReadBlobs`, async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.digests[0]?.hash);
      const results = await cas.batchRead(fn, req.digests, req.acceptableCompressors, ctx);
      return {
        responses: results.map((r) => ({
          digest: r.digest,
          data: r.data,
          compressor: r.compressor as number,
          status: status(r.code, r.message),
        })),
      };
    }),

    getTree: serverStreaming(`${SERVICE}/GetTree`, async (req, send, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.rootDigest?.hash);
      const root = validateDigest(req.rootDigest, fn, 'root_digest');
      const pageSize = req.pageSize > 0 ? req.pageSize : DEFAULT_TREE_PAGE;
      const start = parsePageToken(req.pageToken);
      // Pages are offsets into the walk's deterministic order: a token stays valid because
      // directories are immutable.
      let index = 0;
      let page: Directory[] = [];
      let pageBytes = 0;
      let rootFound = false;
      for await (const { directory, digest } of walkTree(cas, fn, root, ctx)) {
        if (digest === root) rootFound = true;
        if (index++ < start) continue;
        if (page.length >= pageSize || pageBytes + digest.sizeBytes > TREE_PAGE_BYTES) {
          await send({ directories: page, nextPageToken: String(index - 1) });
          page = [];
          pageBytes = 0;
        }
        page.push(directory);
        pageBytes += digest.sizeBytes;
      }
      if (!rootFound && start === 0)
        throw notFound(`root directory ${root.hash}/${root.sizeBytes} is not in the CAS`);
      await send({ directories: page, nextPageToken: '' });
    }),

    splitBlob: unary(`${SERVICE}/SplitBlob`, async () => {
      throw unimplemented('SplitBlob is not supported (split_blob_support is false)');
    }),
    spliceBlob: unary(`${SERVICE}/SpliceBlob`, async () => {
      throw unimplemented('SpliceBlob is not supported (splice_blob_support is false)');
    }),
  };
}

function parsePageToken(token: string): number {
  if (token === '') return 0;
  const n = Number(token);
  if (!/^[0-9]+$/.test(token) || !Number.isSafeInteger(n)) {
    throw invalidArgument(`page_token "${token.slice(0, 100)}" was not issued by this server`);
  }
  return n;
}
