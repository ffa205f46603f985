/**
 * ActionCache API against a real `remex serve`: round trips per instance name, the completeness
 * check (a hit whose outputs are gone from the CAS is NOT_FOUND), inlining, inline contents moved
 * into the CAS on update, bad input, and a server that refuses client-written results.
 */
import { status } from '@grpc/grpc-js';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  ActionCacheService,
  ActionResult,
  BatchUpdateBlobsRequest,
  CapabilitiesService,
  ContentAddressableStorageService,
  Directory,
  FindMissingBlobsRequest,
  GetActionResultRequest,
  Tree,
  UpdateActionResultRequest,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { digestOf, errorOf, sha256 } from '../helpers/blobs.js';
import { clientsFor, unaryCall, type Clients, type DeepPartial } from '../helpers/clients.js';
import { startRemex, type RemexProcess } from '../helpers/remex-process.js';

type Digest = { hash: string; sizeBytes: number };

let remex: RemexProcess;
let c: Clients;

beforeAll(async () => {
  remex = await startRemex({ config: { instanceNames: ['', 'a', 'b'] } });
  c = clientsFor(remex.address);
});

afterAll(async () => {
  c?.close();
  expect(await remex?.stop()).toBe(0);
});

const AC = ActionCacheService;
const CAS = ContentAddressableStorageService;

const getResult = (req: DeepPartial<GetActionResultRequest>, clients: Clients = c) =>
  unaryCall(clients.actionCache, AC.getActionResult, GetActionResultRequest.fromPartial(req));
const updateResult = (req: DeepPartial<UpdateActionResultRequest>, clients: Clients = c) =>
  unaryCall(clients.actionCache, AC.updateActionResult, UpdateActionResultRequest.fromPartial(req));
const findMissing = (blobDigests: Digest[]) =>
  unaryCall(c.cas, CAS.findMissingBlobs, FindMissingBlobsRequest.fromPartial({ blobDigests }));

/** Uploads blobs through BatchUpdateBlobs and checks that each was stored. */
async function upload(...blobs: Buffer[]): Promise<void> {
  const res = await unaryCall(
    c.cas,
    CAS.batchUpdateBlobs,
    BatchUpdateBlobsRequest.fromPartial({ requests: blobs.map((b) => ({ digest: digestOf(b), data: b })) }),
  );
  expect(res.responses.map((r) => r.status?.code)).toEqual(blobs.map(() => 0));
}

const unique = (label: string) => Buffer.from(`${label} ${randomUUID()}`);
/** A fresh action digest (the ActionCache never reads the Action itself). */
const newAction = () => digestOf(unique('action'));
const encodeDirectory = (d: DeepPartial<Directory>) =>
  Buffer.from(Directory.encode(Directory.fromPartial(d)).finish());

/**
 * Every blob of a typical result: two output files, stdout, stderr, and an output directory
 * (out/ → f1, sub/ → f2) described by a Tree. `result` names them all by digest only.
 */
function outputs() {
  const file1 = unique('output file 1');
  const file2 = unique('output file 2');
  const stdout = unique('stdout');
  const stderr = unique('stderr');
  const dirFile1 = unique('tree file 1');
  const dirFile2 = unique('tree file 2');
  const sub = Directory.fromPartial({
    files: [{ name: 'f2', digest: digestOf(dirFile2), isExecutable: true }],
  });
  const subBytes = Buffer.from(Directory.encode(sub).finish());
  const root = Directory.fromPartial({
    files: [{ name: 'f1', digest: digestOf(dirFile1) }],
    directories: [{ name: 'sub', digest: digestOf(subBytes) }],
  });
  const tree = Buffer.from(Tree.encode(Tree.fromPartial({ root, children: [sub] })).finish());
  const result: DeepPartial<ActionResult> = {
    outputFiles: [
      { path: 'bin/tool', digest: digestOf(file1), isExecutable: true },
      { path: 'lib/data.txt', digest: digestOf(file2) },
    ],
    outputDirectories: [{ path: 'out', treeDigest: digestOf(tree) }],
    exitCode: 3,
    stdoutDigest: digestOf(stdout),
    stderrDigest: digestOf(stderr),
  };
  return { file1, file2, stdout, stderr, dirFile1, dirFile2, tree, result };
}

describe('ActionCache round trip', () => {
  it('stores and serves a result with output files, an output directory, stdout/stderr and exit code', async () => {
    const o = outputs();
    await upload(o.file1, o.file2, o.stdout, o.stderr, o.dirFile1, o.dirFile2, o.tree);
    const action = newAction();
    const stored = await updateResult({ actionDigest: action, actionResult: o.result });
    expect(stored).toMatchObject(o.result);

    const got = await getResult({ actionDigest: action });
    expect(got).toMatchObject({
      exitCode: 3,
      stdoutDigest: digestOf(o.stdout),
      stderrDigest: digestOf(o.stderr),
      outputDirectories: [{ path: 'out', treeDigest: digestOf(o.tree) }],
    });
    expect(got.outputFiles.map((f) => [f.path, f.digest, f.isExecutable])).toEqual([
      ['bin/tool', digestOf(o.file1), true],
      ['lib/data.txt', digestOf(o.file2), false],
    ]);
    // Nothing was asked to be inlined.
    expect(got.stdoutRaw.length).toBe(0);
    expect(got.stderrRaw.length).toBe(0);
    expect(got.outputFiles.every((f) => f.contents.length === 0)).toBe(true);
  });

  it('keeps results per instance name', async () => {
    const o = outputs();
    await upload(o.file1, o.file2, o.stdout, o.stderr, o.dirFile1, o.dirFile2, o.tree);
    const action = newAction();
    await updateResult({ instanceName: 'a', actionDigest: action, actionResult: o.result });

    expect((await getResult({ instanceName: 'a', actionDigest: action })).exitCode).toBe(3);
    for (const instanceName of ['b', '']) {
      const err = await errorOf(getResult({ instanceName, actionDigest: action }));
      expect(err.code).toBe(status.NOT_FOUND);
      expect(err.details).toMatch(`no action result for action ${action.hash}/${action.sizeBytes}`);
    }

    // A result for the same action under "b" is independent of the one under "a".
    await updateResult({ instanceName: 'b', actionDigest: action, actionResult: { exitCode: 7 } });
    expect((await getResult({ instanceName: 'b', actionDigest: action })).exitCode).toBe(7);
    expect((await getResult({ instanceName: 'a', actionDigest: action })).exitCode).toBe(3);
  });

  it('replaces the result of an action on a second update', async () => {
    const action = newAction();
    await updateResult({ actionDigest: action, actionResult: { exitCode: 1 } });
    await updateResult({ actionDigest: action, actionResult: { exitCode: 0 } });
    expect((await getResult({ actionDigest: action })).exitCode).toBe(0);
  });

  it('keeps digest functions apart (a BLAKE3 action is not the SHA256 action of the same hex)', async () => {
    const action = newAction(); // 64 hex characters: valid as SHA256 and as BLAKE3
    await updateResult({ actionDigest: action, actionResult: { exitCode: 9 }, digestFunction: 9 });
    expect((await getResult({ actionDigest: action, digestFunction: 9 })).exitCode).toBe(9);
    const err = await errorOf(getResult({ actionDigest: action }));
    expect(err.code).toBe(status.NOT_FOUND);
  });
});

describe('ActionCache completeness check', () => {
  // Which blob of outputs() is withheld from the CAS; the result must then be NOT_FOUND.
  it.each([
    ['an output file blob', 'file1'],
    ['the stdout blob', 'stdout'],
    ['the stderr blob', 'stderr'],
    ['the Tree blob of an output directory', 'tree'],
    ['a file named inside the Tree', 'dirFile2'],
  ] as const)('answers NOT_FOUND when %s is not in the CAS', async (_what, withheld) => {
    const o = outputs();
    const { result: _result, ...all } = o;
    await upload(
      ...Object.entries(all)
        .filter(([name]) => name !== withheld)
        .map(([, blob]) => blob),
    );
    const action = newAction();
    await updateResult({ actionDigest: action, actionResult: o.result });

    const missing = digestOf(all[withheld]);
    const err = await errorOf(getResult({ actionDigest: action, inlineStdout: true }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(
      `action result for ${action.hash}/${action.sizeBytes} refers to 1 blob(s) no longer in the CAS, e.g. ${missing.hash}/${missing.sizeBytes}`,
    );

    // Once the blob is back, the entry is a hit again: the entry itself was kept.
    await upload(all[withheld]);
    expect((await getResult({ actionDigest: action })).exitCode).toBe(3);
  });

  it('checks output directories given by root_directory_digest, directory by directory', async () => {
    const leafFile = unique('leaf file');
    const leaf = encodeDirectory({ files: [{ name: 'x', digest: digestOf(leafFile) }] });
    const root = encodeDirectory({ directories: [{ name: 'leaf', digest: digestOf(leaf) }] });
    await upload(root, leafFile); // leaf directory withheld
    const action = newAction();
    await updateResult({
      actionDigest: action,
      actionResult: { outputDirectories: [{ path: 'gen', rootDirectoryDigest: digestOf(root) }] },
    });
    const err = await errorOf(getResult({ actionDigest: action }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(/no longer in the CAS/);
    expect(err.details).toMatch(sha256(leaf));

    await upload(leaf);
    expect((await getResult({ actionDigest: action })).outputDirectories).toEqual([
      expect.objectContaining({ path: 'gen', rootDirectoryDigest: digestOf(root) }),
    ]);
  });
});

describe('ActionCache inlining', () => {
  let action: Digest;
  let o: ReturnType<typeof outputs>;

  beforeAll(async () => {
    o = outputs();
    await upload(o.file1, o.file2, o.stdout, o.stderr, o.dirFile1, o.dirFile2, o.tree);
    action = newAction();
    await updateResult({ actionDigest: action, actionResult: o.result });
  });

  const contentsOf = (r: ActionResult) =>
    Object.fromEntries(r.outputFiles.map((f) => [f.path, f.contents.toString()]));

  it('inlines stdout only when inline_stdout is set', async () => {
    const r = await getResult({ actionDigest: action, inlineStdout: true });
    expect(r.stdoutRaw.toString()).toBe(o.stdout.toString());
    expect(r.stderrRaw.length).toBe(0);
    expect(contentsOf(r)).toEqual({ 'bin/tool': '', 'lib/data.txt': '' });
    expect(r.stdoutDigest).toEqual(digestOf(o.stdout));
  });

  it('inlines stderr only when inline_stderr is set', async () => {
    const r = await getResult({ actionDigest: action, inlineStderr: true });
    expect(r.stderrRaw.toString()).toBe(o.stderr.toString());
    expect(r.stdoutRaw.length).toBe(0);
    expect(contentsOf(r)).toEqual({ 'bin/tool': '', 'lib/data.txt': '' });
  });

  it('inlines exactly the output files named in inline_output_files', async () => {
    const r = await getResult({ actionDigest: action, inlineOutputFiles: ['lib/data.txt'] });
    expect(contentsOf(r)).toEqual({ 'bin/tool': '', 'lib/data.txt': o.file2.toString() });
    expect(r.stdoutRaw.length).toBe(0);
    expect(r.stderrRaw.length).toBe(0);
    // Digests stay set next to inlined contents.
    expect(r.outputFiles[1]!.digest).toEqual(digestOf(o.file2));
  });

  it('inlines everything asked for at once', async () => {
    const r = await getResult({
      actionDigest: action,
      inlineStdout: true,
      inlineStderr: true,
      inlineOutputFiles: ['bin/tool', 'lib/data.txt', 'not/an/output'],
    });
    expect(r.stdoutRaw.toString()).toBe(o.stdout.toString());
    expect(r.stderrRaw.toString()).toBe(o.stderr.toString());
    expect(contentsOf(r)).toEqual({ 'bin/tool': o.file1.toString(), 'lib/data.txt': o.file2.toString() });
  });
});

describe('ActionCache update with inline contents', () => {
  it('stores stdout_raw, stderr_raw and output file contents in the CAS and answers with digests', async () => {
    const stdout = unique('inline stdout');
    const stderr = unique('inline stderr');
    const contents = unique('inline output file');
    const action = newAction();
    const stored = await updateResult({
      actionDigest: action,
      actionResult: { stdoutRaw: stdout, stderrRaw: stderr, outputFiles: [{ path: 'o.txt', contents }] },
    });
    expect(stored.stdoutDigest).toEqual(digestOf(stdout));
    expect(stored.stderrDigest).toEqual(digestOf(stderr));
    expect(stored.outputFiles[0]!.digest).toEqual(digestOf(contents));
    expect(stored.stdoutRaw.length).toBe(0);
    expect(stored.outputFiles[0]!.contents.length).toBe(0);

    const got = await getResult({ actionDigest: action });
    expect(got.stdoutDigest).toEqual(digestOf(stdout));
    expect(got.stdoutRaw.length).toBe(0);
    expect(got.stderrDigest).toEqual(digestOf(stderr));
    expect(got.outputFiles[0]!.digest).toEqual(digestOf(contents));
    const missing = await findMissing([got.stdoutDigest!, got.stderrDigest!, got.outputFiles[0]!.digest!]);
    expect(missing.missingBlobDigests).toEqual([]);

    const inlined = await getResult({ actionDigest: action, inlineStdout: true });
    expect(inlined.stdoutRaw.equals(stdout)).toBe(true);
  });

  it('rejects inline contents that do not match the digest given with them', async () => {
    const stdout = unique('mismatched stdout');
    const claimed = digestOf(unique('something else'));
    const action = newAction();
    const err = await errorOf(
      updateResult({ actionDigest: action, actionResult: { stdoutRaw: stdout, stdoutDigest: claimed } }),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/does not match digest|bytes, not/);
    expect((await errorOf(getResult({ actionDigest: action }))).code).toBe(status.NOT_FOUND);
  });
});

describe('ActionCache bad input', () => {
  const validResult = { exitCode: 0 };

  it.each([
    [
      'a malformed hash',
      { actionDigest: { hash: 'xyz', sizeBytes: 1 }, digestFunction: 1 },
      /action_digest has invalid hash "xyz"/,
    ],
    [
      'an uninferable hash length',
      { actionDigest: { hash: 'xyz', sizeBytes: 1 } },
      /cannot infer the digest function from a hash of 3 characters/,
    ],
    [
      'a negative size',
      { actionDigest: { hash: sha256('a'), sizeBytes: -1 } },
      /action_digest \w+ has invalid size -1/,
    ],
    ['no action digest', {}, /action_digest is missing/],
    [
      'an unknown instance',
      { instanceName: 'nope', actionDigest: digestOf('x') },
      /unknown instance name "nope"/,
    ],
  ] as [string, DeepPartial<GetActionResultRequest>, RegExp][])(
    'rejects %s with INVALID_ARGUMENT in Get and Update',
    async (_what, req, message) => {
      const getErr = await errorOf(getResult(req));
      expect(getErr.code).toBe(status.INVALID_ARGUMENT);
      expect(getErr.details).toMatch(message);
      const updateErr = await errorOf(updateResult({ ...req, actionResult: validResult }));
      expect(updateErr.code).toBe(status.INVALID_ARGUMENT);
      expect(updateErr.details).toMatch(message);
    },
  );

  it('rejects an update without action_result with INVALID_ARGUMENT', async () => {
    const action = newAction();
    const err = await errorOf(updateResult({ actionDigest: action }));
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/action_result is missing/);
  });

  it('rejects a malformed output digest inside the result with INVALID_ARGUMENT', async () => {
    const err = await errorOf(
      updateResult({
        actionDigest: newAction(),
        actionResult: { outputFiles: [{ path: 'f', digest: { hash: 'zz', sizeBytes: 2 } }] },
      }),
    );
    expect(err.code).toBe(status.INVALID_ARGUMENT);
    expect(err.details).toMatch(/output_files\[0\]\.digest has invalid hash "zz"/);
  });

  it('answers GetActionResult for an unknown action with NOT_FOUND', async () => {
    const action = newAction();
    const err = await errorOf(getResult({ actionDigest: action }));
    expect(err.code).toBe(status.NOT_FOUND);
    expect(err.details).toMatch(`no action result for action ${action.hash}/${action.sizeBytes}`);
  });
});

describe('ActionCache with actionCacheUpdates: false', () => {
  let readOnly: RemexProcess;
  let rc: Clients;

  beforeAll(async () => {
    readOnly = await startRemex({ config: { actionCacheUpdates: false } });
    rc = clientsFor(readOnly.address);
  });

  afterAll(async () => {
    rc?.close();
    expect(await readOnly?.stop()).toBe(0);
  });

  it('refuses UpdateActionResult with PERMISSION_DENIED', async () => {
    const action = newAction();
    const err = await errorOf(updateResult({ actionDigest: action, actionResult: { exitCode: 0 } }, rc));
    expect(err.code).toBe(status.PERMISSION_DENIED);
    expect(err.details).toMatch(/does not accept action results from clients/);
    // Nothing was stored, and reads still work.
    const getErr = await errorOf(getResult({ actionDigest: action }, rc));
    expect(getErr.code).toBe(status.NOT_FOUND);
  });

  it('advertises update_enabled false in Capabilities', async () => {
    const caps = await unaryCall(rc.capabilities, CapabilitiesService.getCapabilities, { instanceName: '' });
    expect(caps.cacheCapabilities?.actionCacheUpdateCapabilities?.updateEnabled).toBe(false);
  });
});
