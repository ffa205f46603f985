import { credentials } from '@grpc/grpc-js';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { parseArgs } from 'node:util';
import { digestOf } from '../common/digest.js';
import { ConfigError } from '../common/config-error.js';
import {
  Action,
  Command,
  ExecuteOperationMetadata,
  ExecuteResponse,
  ExecutionClient,
  type Digest,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Operation } from '../gen/google/longrunning/operations.js';
import { CasClient } from '../remote/cas-client.js';
import { uploadDirectory } from '../remote/directory-upload.js';
import { downloadOutputs } from './output-download.js';

export const EXECUTE_USAGE = `usage: remex execute [options] -- COMMAND [ARG...]

Runs one command remotely: uploads the input directory, executes, shows stdout and
stderr, downloads the outputs into the input directory, and exits with the command's
exit code.

options:
  --server ADDR        remex server (default 127.0.0.1:50051)
  --instance NAME      instance name (default "")
  --input DIR          directory uploaded as the input root (default: none)
  --cwd PATH           working directory, relative to the input root
  --output PATH        an output file or directory to fetch back (repeatable)
  --env KEY=VALUE      environment variable of the command (repeatable)
  --platform KEY=VALUE platform property, e.g. OSFamily=linux (repeatable)
  --timeout SECONDS    action timeout
  --no-cache           do not cache the result (do_not_cache)
  --skip-cache-lookup  run even when a cached result exists
`;

const STAGES = ['unknown', 'checking the cache', 'queued', 'executing', 'completed'];

function pairs(list: string[] | undefined, flag: string): { name: string; value: string }[] {
  return (list ?? []).map((text) => {
    const at = text.indexOf('=');
    if (at <= 0) throw new ConfigError(`${flag} ${JSON.stringify(text)}: expected KEY=VALUE`);
    return { name: text.slice(0, at), value: text.slice(at + 1) };
  });
}

const byName = (a: { name: string }, b: { name: string }) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** `remex execute`: resolves to the exit code to leave with. */
export async function runExecuteCommand(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      server: { type: 'string', default: '127.0.0.1:50051' },
      instance: { type: 'string', default: '' },
      input: { type: 'string' },
      cwd: { type: 'string', default: '' },
      output: { type: 'string', multiple: true },
      env: { type: 'string', multiple: true },
      platform: { type: 'string', multiple: true },
      timeout: { type: 'string' },
      'no-cache': { type: 'boolean', default: false },
      'skip-cache-lookup': { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(EXECUTE_USAGE);
    return 0;
  }
  if (positionals.length === 0) throw new ConfigError(`no command given\n\n${EXECUTE_USAGE}`);
  const timeout = values.timeout === undefined ? undefined : Number(values.timeout);
  if (timeout !== undefined && !(timeout > 0))
    throw new ConfigError(`--timeout ${values.timeout}: expected seconds > 0`);
  const progress = new Progress();
  const cas = CasClient.connect(values.server, { instanceName: values.instance });
  const execution = new ExecutionClient(values.server, credentials.createInsecure());
  try {
    progress.show('uploading inputs');
    const inputRoot = values.input
      ? await uploadDirectory(cas, resolve(values.input))
      : await emptyDirectory(cas);
    const command = Buffer.from(
      Command.encode(
        Command.fromPartial({
          arguments: positionals,
          environmentVariables: pairs(values.env, '--env').sort(byName),
          outputPaths: [...(values.output ?? [])].sort(),
          workingDirectory: values.cwd,
          platform: { properties: pairs(values.platform, '--platform').sort(byName) },
        }),
      ).finish(),
    );
    const action = Buffer.from(
      Action.encode(
        Action.fromPartial({
          commandDigest: await digestOf(cas.digestFunction, command),
          inputRootDigest: inputRoot,
          doNotCache: values['no-cache'],
          timeout: timeout
            ? { seconds: Math.floor(timeout), nanos: Math.round((timeout % 1) * 1e9) }
            : undefined,
          platform: { properties: pairs(values.platform, '--platform').sort(byName) },
        }),
      ).finish(),
    );
    const actionDigest = await digestOf(cas.digestFunction, action);
    await cas.uploadMissing([
      { digest: await digestOf(cas.digestFunction, command), data: command },
      { digest: actionDigest, data: action },
    ]);
    const response = await execute(
      execution,
      values.instance,
      actionDigest,
      values['skip-cache-lookup'],
      (stage) => progress.show(STAGES[stage] ?? `stage ${stage}`),
    );
    progress.clear();
    const status = response.status;
    if (status && status.code !== 0) {
      process.stderr.write(`remex: the action failed: ${status.message} (code ${status.code})\n`);
    }
    const result = response.result;
    if (!result) return status && status.code !== 0 ? 1 : 0;
    await showStream(cas, result.stdoutDigest, process.stdout);
    await showStream(cas, result.stderrDigest, process.stderr);
    if (values.input) {
      const written = await downloadOutputs(cas, result, resolve(values.input));
      if (written.length > 0)
        process.stderr.write(
          `remex: ${written.length} output(s) written under ${values.input}${response.cachedResult ? ' (cached result)' : ''}\n`,
        );
    }
    return status && status.code !== 0 && result.exitCode === 0 ? 1 : result.exitCode;
  } finally {
    progress.clear();
    cas.close();
    execution.close();
  }
}

async function emptyDirectory(cas: CasClient): Promise<Digest> {
  const dir = await mkdtemp(join(tmpdir(), 'remex-empty-'));
  try {
    return await uploadDirectory(cas, dir);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function execute(
  client: ExecutionClient,
  instanceName: string,
  actionDigest: Digest,
  skipCacheLookup: boolean,
  onStage: (stage: number) => void,
): Promise<ExecuteResponse> {
  return new Promise((resolve, reject) => {
    const stream = client.execute({
      instanceName,
      actionDigest,
      skipCacheLookup,
      executionPolicy: undefined,
      resultsCachePolicy: undefined,
      digestFunction: 0,
      inlineStdout: false,
      inlineStderr: false,
      inlineOutputFiles: [],
    });
    let last: Operation | undefined;
    stream.on('data', (op: Operation) => {
      last = op;
      if (op.metadata) onStage(ExecuteOperationMetadata.decode(op.metadata.value).stage);
    });
    stream.on('error', reject);
    stream.on('end', () => {
      if (!last?.done || !last.response)
        reject(new Error('the server ended the Execute stream before the action completed'));
      else resolve(ExecuteResponse.decode(last.response.value));
    });
  });
}

async function showStream(
  cas: CasClient,
  digest: Digest | undefined,
  out: NodeJS.WritableStream,
): Promise<void> {
  if (!digest || digest.sizeBytes === 0) return;
  const dir = await mkdtemp(join(tmpdir(), 'remex-out-'));
  try {
    const file = join(dir, 'blob');
    await cas.downloadToFiles([{ digest, path: file }]);
    await pipeline(createReadStream(file), out, { end: false });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** One progress line on stderr, rewritten in place on a terminal. */
class Progress {
  private shown = false;
  private readonly tty = process.stderr.isTTY === true;
  private last = '';

  show(text: string): void {
    if (text === this.last) return;
    this.last = text;
    if (this.tty) {
      process.stderr.write(`\r\x1b[Kremex: ${text}…`);
      this.shown = true;
    } else {
      process.stderr.write(`remex: ${text}\n`);
    }
  }

  clear(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
