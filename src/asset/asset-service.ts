import type { FetchServer, PushServer } from '../gen/build/bazel/remote/asset/v1/remote_asset.js';
import type { Timestamp } from '../gen/google/protobuf/timestamp.js';
import { resolveDigestFunction } from '../common/digest.js';
import type { Instances } from '../common/instances.js';
import { unary } from '../server/handlers.js';
import type { AssetIndex } from './asset-index.js';

const ms = (t: Timestamp | undefined) => (t ? t.seconds * 1000 + Math.floor(t.nanos / 1e6) : 0);
const ts = (msSinceEpoch: number): Timestamp | undefined =>
  msSinceEpoch ? { seconds: Math.floor(msSinceEpoch / 1000), nanos: (msSinceEpoch % 1000) * 1e6 } : undefined;
const OK = { code: 0, message: '', details: [] };

export function fetchService(index: AssetIndex, instances: Instances): FetchServer {
  return {
    fetchBlob: unary('Fetch/FetchBlob', async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction);
      const hit = await index.fetch(
        req.instanceName,
        'blob',
        fn,
        req.uris,
        req.qualifiers,
        ms(req.oldestContentAccepted),
        ctx,
      );
      return {
        status: OK,
        uri: hit.uri,
        qualifiers: req.qualifiers,
        expiresAt: ts(hit.expireAt),
        blobDigest: hit.digest,
        digestFunction: fn.value as number,
      };
    }),
    fetchDirectory: unary('Fetch/FetchDirectory', async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction);
      const hit = await index.fetch(
        req.instanceName,
        'directory',
        fn,
        req.uris,
        req.qualifiers,
        ms(req.oldestContentAccepted),
        ctx,
      );
      return {
        status: OK,
        uri: hit.uri,
        qualifiers: req.qualifiers,
        expiresAt: ts(hit.expireAt),
        rootDirectoryDigest: hit.digest,
        digestFunction: fn.value as number,
      };
    }),
  };
}

export function pushService(index: AssetIndex, instances: Instances): PushServer {
  return {
    pushBlob: unary('Push/PushBlob', async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.blobDigest?.hash);
      await index.push(
        req.instanceName,
        'blob',
        fn,
        req.uris,
        req.qualifiers,
        req.blobDigest,
        ms(req.expireAt),
        ctx,
      );
      return {};
    }),
    pushDirectory: unary('Push/PushDirectory', async (req, ctx) => {
      instances.check(req.instanceName);
      const fn = resolveDigestFunction(req.digestFunction, req.rootDirectoryDigest?.hash);
      await index.push(
        req.instanceName,
        'directory',
        fn,
        req.uris,
        req.qualifiers,
        req.rootDirectoryDigest,
        ms(req.expireAt),
        ctx,
      );
      return {};
    }),
  };
}
