import { digestOf, validateDigest, type Digest, type DigestFunction } from '../common/digest.js';
import { Code, RemexError, invalidArgument, notFound } from '../common/status.js';
import type { StoreContext } from '../common/store-context.js';
import { log } from '../common/log.js';
import type { Cas } from '../cas/cas.js';
import { fileDigests, walkTree } from '../cas/tree-walker.js';
import type { KeyValueStore } from '../kv/kv-store.js';
import { ActionResult, Tree } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';

export interface ActionCacheOptions {
  /** Whether clients may write results (ActionCacheUpdateCapabilities.update_enabled). */
  allowUpdates: boolean;
  /** Largest total of bytes inlined into one GetActionResult answer. */
  maxInlineBytes: number;
}

export interface InlineRequest {
  stdout: boolean;
  stderr: boolean;
  outputFiles: readonly string[];
}

/**
 * The ActionCache: action digest → ActionResult, per instance name and digest function.
 * A hit is served only when every blob it names (output files, the trees of output
 * directories and every file in them, stdout and stderr) is still in the CAS; otherwise
 * the answer is NOT_FOUND, so clients never get a result they cannot download
 * (the completeness check of Buildbarn's CompletenessCheckingBlobAccess).
 */
export class ActionCache {
  constructor(
    private readonly kv: KeyValueStore,
    private readonly cas: Cas,
    private readonly options: ActionCacheOptions,
  ) {}

  get updatesAllowed(): boolean {
    return this.options.allowUpdates;
  }

  private key(instance: string, fn: DigestFunction, d: Digest): string {
    return `${fn.segment}:${d.hash}-${d.sizeBytes}:${instance}`;
  }

  async get(
    instance: string,
    fn: DigestFunction,
    actionDigest: Digest | undefined,
    inline: InlineRequest,
    ctx: StoreContext,
  ): Promise<ActionResult> {
    const digest = validateDigest(actionDigest, fn, 'action_digest');
    const key = this.key(instance, fn, digest);
    const raw = await this.kv.get(key, ctx);
    const absent = `no action result for action ${digest.hash}/${digest.sizeBytes}`;
    if (!raw) throw notFound(absent);
    let result: ActionResult;
    try {
      result = ActionResult.decode(raw);
      checkDigests(fn, result);
    } catch (err) {
      // A truncated or garbled entry would fail every lookup of this action for ever:
      // it is a miss, and goes, so the next execution writes a good one.
      log.warn(
        { instance, action: `${digest.hash}/${digest.sizeBytes}`, bytes: raw.length, err: String(err) },
        'corrupt action-cache entry deleted',
      );
      await this.kv.delete(key, ctx);
      throw notFound(`${absent} (the stored entry was corrupt and has been deleted)`);
    }
    const missing = await this.missingOutputs(fn, result, ctx);
    if (missing.length > 0) {
      throw notFound(
        `action result for ${digest.hash}/${digest.sizeBytes} refers to ${missing.length} blob(s) no longer in the CAS, e.g. ${missing[0]!.hash}/${missing[0]!.sizeBytes}`,
      );
    }
    await this.inline(fn, result, inline, ctx);
    return result;
  }

  async update(
    instance: string,
    fn: DigestFunction,
    actionDigest: Digest | undefined,
    result: ActionResult | undefined,
    ctx: StoreContext,
  ): Promise<ActionResult> {
    if (!this.options.allowUpdates) {
      throw new RemexError(Code.PERMISSION_DENIED, 'this server does not accept action results from clients');
    }
    const digest = validateDigest(actionDigest, fn, 'action_digest');
    if (!result) throw invalidArgument('action_result is missing');
    const stored = await this.normalise(fn, result, ctx);
    await this.kv.put(this.key(instance, fn, digest), Buffer.from(ActionResult.encode(stored).finish()), ctx);
    return stored;
  }

  /** Stores a result the server itself produced (remote execution): no permission check. */
  async record(
    instance: string,
    fn: DigestFunction,
    actionDigest: Digest,
    result: ActionResult,
    ctx: StoreContext,
  ): Promise<void> {
    const stored = await this.normalise(fn, result, ctx);
    await this.kv.put(
      this.key(instance, fn, actionDigest),
      Buffer.from(ActionResult.encode(stored).finish()),
      ctx,
    );
  }

  /** Validates every digest and moves inlined contents into the CAS, so stored results only reference blobs. */
  private async normalise(
    fn: DigestFunction,
    result: ActionResult,
    ctx: StoreContext,
  ): Promise<ActionResult> {
    const copy = ActionResult.fromPartial(result);
    const store = async (data: Buffer, digest: Digest | undefined, what: string): Promise<Digest> => {
      if (digest && digest.hash !== '') {
        const d = validateDigest(digest, fn, what);
        if (data.length > 0) await this.cas.putVerified({ fn, ...d }, data, ctx);
        return d;
      }
      const d = await digestOf(fn, data);
      await this.cas.putVerified({ fn, ...d }, data, ctx);
      return d;
    };
    copy.outputFiles = await Promise.all(
      copy.outputFiles.map(async (f, i) => ({
        ...f,
        digest: await store(f.contents, f.digest, `output_files[${i}].digest`),
        contents: Buffer.alloc(0),
      })),
    );
    copy.outputDirectories.forEach((d, i) => {
      if (d.treeDigest && d.treeDigest.hash !== '')
        validateDigest(d.treeDigest, fn, `output_directories[${i}].tree_digest`);
      if (d.rootDirectoryDigest && d.rootDirectoryDigest.hash !== '') {
        validateDigest(d.rootDirectoryDigest, fn, `output_directories[${i}].root_directory_digest`);
      }
    });
    if (copy.stdoutRaw.length > 0 || (copy.stdoutDigest && copy.stdoutDigest.hash !== '')) {
      copy.stdoutDigest = await store(copy.stdoutRaw, copy.stdoutDigest, 'stdout_digest');
    }
    if (copy.stderrRaw.length > 0 || (copy.stderrDigest && copy.stderrDigest.hash !== '')) {
      copy.stderrDigest = await store(copy.stderrRaw, copy.stderrDigest, 'stderr_digest');
    }
    copy.stdoutRaw = Buffer.alloc(0);
    copy.stderrRaw = Buffer.alloc(0);
    return copy;
  }

  /** Every blob the result refers to that the CAS lacks (the completeness check). */
  async missingOutputs(fn: DigestFunction, result: ActionResult, ctx: StoreContext): Promise<Digest[]> {
    const wanted: Digest[] = [];
    const missing: Digest[] = [];
    const add = (d: Digest | undefined) => {
      if (d && d.hash !== '') wanted.push(d);
    };
    result.outputFiles.forEach((f) => add(f.digest));
    add(result.stdoutDigest);
    add(result.stderrDigest);
    for (const dir of result.outputDirectories) {
      if (dir.treeDigest && dir.treeDigest.hash !== '') {
        let tree: Tree;
        try {
          tree = Tree.decode(await this.cas.getBuffer({ fn, ...dir.treeDigest }, ctx));
        } catch (err) {
          // A missing or unparseable Tree makes the result unusable, like a missing blob.
          if (err instanceof RemexError && err.code !== Code.NOT_FOUND) throw err;
          missing.push(dir.treeDigest);
          continue;
        }
        for (const d of [tree.root, ...tree.children]) if (d) fileDigests(d).forEach(add);
      } else if (dir.rootDirectoryDigest && dir.rootDirectoryDigest.hash !== '') {
        for await (const { directory } of walkTree(this.cas, fn, dir.rootDirectoryDigest, ctx, (d) =>
          missing.push(d),
        )) {
          fileDigests(directory).forEach(add);
        }
      }
    }
    missing.push(...(await this.cas.findMissingStored(fn, wanted, ctx)));
    return missing;
  }

  private async inline(
    fn: DigestFunction,
    result: ActionResult,
    req: InlineRequest,
    ctx: StoreContext,
  ): Promise<void> {
    let budget = this.options.maxInlineBytes;
    const fetch = async (d: Digest | undefined): Promise<Buffer | undefined> => {
      if (!d || d.hash === '' || d.sizeBytes > budget) return undefined;
      budget -= d.sizeBytes;
      return this.cas.getBuffer({ fn, ...d }, ctx);
    };
    if (req.stdout) result.stdoutRaw = (await fetch(result.stdoutDigest)) ?? Buffer.alloc(0);
    if (req.stderr) result.stderrRaw = (await fetch(result.stderrDigest)) ?? Buffer.alloc(0);
    const wanted = new Set(req.outputFiles);
    for (const f of result.outputFiles) {
      if (wanted.has(f.path)) f.contents = (await fetch(f.digest)) ?? Buffer.alloc(0);
    }
  }
}

/** Throws unless every digest a stored result names is well formed for fn. */
function checkDigests(fn: DigestFunction, result: ActionResult): void {
  const check = (d: Digest | undefined, what: string) => {
    if (d && (d.hash !== '' || d.sizeBytes !== 0)) validateDigest(d, fn, what);
  };
  result.outputFiles.forEach((f, i) => check(f.digest, `output_files[${i}].digest`));
  result.outputDirectories.forEach((d, i) => {
    check(d.treeDigest, `output_directories[${i}].tree_digest`);
    check(d.rootDirectoryDigest, `output_directories[${i}].root_directory_digest`);
  });
  check(result.stdoutDigest, 'stdout_digest');
  check(result.stderrDigest, 'stderr_digest');
}
