import { validateDigest, type Digest, type DigestFunction } from '../common/digest.js';
import { invalidArgument, notFound, failedPrecondition } from '../common/status.js';
import type { StoreContext } from '../common/store-context.js';
import type { Cas } from '../cas/cas.js';
import { fileDigests, walkTree } from '../cas/tree-walker.js';
import type { KeyValueStore } from '../kv/kv-store.js';

export type AssetKind = 'blob' | 'directory';

export interface Qualifier {
  name: string;
  value: string;
}

interface Record {
  hash: string;
  sizeBytes: number;
  /** ms since epoch when the association was pushed. */
  pushedAt: number;
  /** ms since epoch after which it is no longer served; 0 = never. */
  expireAt: number;
}

export interface AssetHit {
  uri: string;
  digest: Digest;
  expireAt: number;
}

/**
 * Remote Asset associations: (instance, kind, URI, qualifiers) → digest, pushed by
 * clients (BuildStream pushes its artifact refs this way) and answered by Fetch.
 * Qualifiers are part of the key: a fetch matches a push only with the same set.
 * A fetch never answers with content that is gone from the CAS: blobs must exist and
 * directories must be complete, else the URI counts as unknown.
 */
export class AssetIndex {
  constructor(
    private readonly kv: KeyValueStore,
    private readonly cas: Cas,
    private readonly now: () => number = Date.now,
  ) {}

  private key(
    instance: string,
    kind: AssetKind,
    fn: DigestFunction,
    uri: string,
    qualifiers: readonly Qualifier[],
  ): string {
    const q = [...qualifiers].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    return JSON.stringify(['asset', instance, kind, fn.segment, uri, q.map((x) => [x.name, x.value])]);
  }

  async push(
    instance: string,
    kind: AssetKind,
    fn: DigestFunction,
    uris: readonly string[],
    qualifiers: readonly Qualifier[],
    digest: Digest | undefined,
    expireAt: number,
    ctx: StoreContext,
  ): Promise<void> {
    checkRequest(uris, qualifiers);
    const d = validateDigest(digest, fn, kind === 'blob' ? 'blob_digest' : 'root_directory_digest');
    const state = await this.present(kind, fn, d, ctx);
    if (state === 'invalid') {
      throw invalidArgument(
        `root_directory_digest ${d.hash}/${d.sizeBytes} names a blob that is not a Directory tree`,
      );
    }
    if (state !== 'present') {
      throw failedPrecondition(
        `${kind === 'blob' ? 'blob' : 'directory tree'} ${d.hash}/${d.sizeBytes} is not (completely) in the CAS; upload it before pushing`,
      );
    }
    const record: Record = { hash: d.hash, sizeBytes: d.sizeBytes, pushedAt: this.now(), expireAt };
    const value = Buffer.from(JSON.stringify(record));
    await Promise.all(
      uris.map((uri) => this.kv.put(this.key(instance, kind, fn, uri, qualifiers), value, ctx)),
    );
  }

  /** The first URI (in request order) with a live, complete association; NOT_FOUND if none. */
  async fetch(
    instance: string,
    kind: AssetKind,
    fn: DigestFunction,
    uris: readonly string[],
    qualifiers: readonly Qualifier[],
    oldestAccepted: number,
    ctx: StoreContext,
  ): Promise<AssetHit> {
    checkRequest(uris, qualifiers);
    for (const uri of uris) {
      const raw = await this.kv.get(this.key(instance, kind, fn, uri, qualifiers), ctx);
      if (!raw) continue;
      const record = JSON.parse(raw.toString()) as Record;
      if (record.expireAt !== 0 && record.expireAt <= this.now()) continue;
      if (oldestAccepted > 0 && record.pushedAt < oldestAccepted) continue;
      const digest = { hash: record.hash, sizeBytes: record.sizeBytes };
      if ((await this.present(kind, fn, digest, ctx)) !== 'present') continue;
      return { uri, digest, expireAt: record.expireAt };
    }
    throw notFound(
      `no ${kind} is known for ${uris.length === 1 ? `URI ${uris[0]}` : `any of ${uris.length} URIs`}`,
    );
  }

  /** Whether the content is all in the CAS; 'invalid' when a directory blob is not a Directory. */
  private async present(
    kind: AssetKind,
    fn: DigestFunction,
    digest: Digest,
    ctx: StoreContext,
  ): Promise<'present' | 'incomplete' | 'invalid'> {
    if (kind === 'blob') return (await this.cas.exists({ fn, ...digest }, ctx)) ? 'present' : 'incomplete';
    let state: 'present' | 'incomplete' | 'invalid' = 'present';
    const files: Digest[] = [];
    const walk = walkTree(this.cas, fn, digest, ctx, (_d, why) => {
      if (state !== 'invalid') state = why === 'invalid' ? 'invalid' : 'incomplete';
    });
    for await (const { directory } of walk) files.push(...fileDigests(directory));
    if (state !== 'present') return state;
    return (await this.cas.findMissingStored(fn, files, ctx)).length === 0 ? 'present' : 'incomplete';
  }
}

function checkRequest(uris: readonly string[], qualifiers: readonly Qualifier[]): void {
  if (uris.length === 0) throw invalidArgument('at least one URI is required');
  uris.forEach((u, i) => {
    if (u === '') throw invalidArgument(`uris[${i}] is empty`);
  });
  const names = new Set<string>();
  for (const q of qualifiers) {
    if (q.name === '') throw invalidArgument('a qualifier has an empty name');
    if (names.has(q.name)) throw invalidArgument(`qualifier "${q.name}" is given more than once`);
    names.add(q.name);
  }
}
