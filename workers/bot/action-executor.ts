import { mkdtemp } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { digestString, validateDigest } from '../../src/common/digest.js';
import { Code, invalidArgument } from '../../src/common/status.js';
import {
  Command,
  type ActionResult,
  type ExecutedActionMetadata,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Any } from '../../src/gen/google/protobuf/any.js';
import type { Status } from '../../src/gen/google/rpc/status.js';
import type { BlobCache } from '../staging/blob-cache.js';
import type { CasClient } from '../../src/remote/cas-client.js';
import { requestedOutputs } from '../staging/command-outputs.js';
import { OK_STATUS, toStatus } from './lease-status.js';
import { digestFile } from '../../src/remote/file-digest.js';
import { createOutputParents, stageInputRoot } from '../staging/input-stager.js';
import { actionOfPayload } from './lease-payload.js';
import { collectOutputs, type CollectedOutputs } from '../staging/output-collector.js';
import { removeTree } from '../../src/remote/remove-tree.js';
import type { Runner } from '../runners/runner.js';
import { durationToMs, msToDuration, toTimestamp } from './timestamps.js';

/** What a lease comes to: the status to report and, when the command ran, its ActionResult. */
export interface LeaseOutcome {
  status: Status;
  result?: ActionResult;
}

export interface ExecutorOptions {
  cas: CasClient;
  cache: BlobCache;
  runner: Runner;
  /** Directory under which each action gets a fresh directory (removed afterwards). */
  execRoot: string;
  log: Logger;
}

/**
 * Runs one lease end to end: reads the Action (from the payload or the CAS) and its
 * Command, stages the input root into a fresh directory, creates output parents, runs the
 * command through the Runner, collects outputs, uploads them with stdout and stderr, and
 * fills in ExecutedActionMetadata. Never throws: a failure before the command ran is a
 * status alone (INVALID_ARGUMENT for bad input, FAILED_PRECONDITION naming missing
 * blobs); a timeout is DEADLINE_EXCEEDED with the partial result.
 */
export class ActionExecutor {
  constructor(private readonly options: ExecutorOptions) {}

  async execute(payload: Any | undefined, workerName: string, signal: AbortSignal): Promise<LeaseOutcome> {
    const { cas, cache, runner, log } = this.options;
    const fn = cas.digestFunction;
    const now = () => toTimestamp(new Date());
    const metadata: ExecutedActionMetadata = {
      worker: workerName,
      queuedTimestamp: undefined,
      workerStartTimestamp: now(),
      workerCompletedTimestamp: undefined,
      inputFetchStartTimestamp: undefined,
      inputFetchCompletedTimestamp: undefined,
      executionStartTimestamp: undefined,
      executionCompletedTimestamp: undefined,
      virtualExecutionDuration: undefined,
      outputUploadStartTimestamp: undefined,
      outputUploadCompletedTimestamp: undefined,
      auxiliaryMetadata: [],
    };
    let dir: string | undefined;
    let actionName = 'action';
    try {
      const { action, actionDigest } = await actionOfPayload(payload, cas, signal);
      if (actionDigest) actionName = `action ${digestString(actionDigest)}`;
      const commandDigest = validateDigest(action.commandDigest, fn, 'Action.command_digest');
      const inputRootDigest = validateDigest(action.inputRootDigest, fn, 'Action.input_root_digest');
      let command: Command;
      const commandBytes = await cas.readBlob(commandDigest, 'command', signal);
      try {
        command = Command.decode(commandBytes);
      } catch (err) {
        throw invalidArgument(
          `command ${digestString(commandDigest)} is not a valid Command: ${(err as Error).message}`,
        );
      }
      if (command.arguments.length === 0 || command.arguments[0] === '') {
        throw invalidArgument(
          `command ${digestString(commandDigest)} has no program to run (arguments[0] is empty)`,
        );
      }
      const requested = requestedOutputs(command);

      dir = await mkdtemp(join(this.options.execRoot, 'action-'));
      const inputRoot = join(dir, 'root');
      const stdoutPath = join(dir, 'stdout');
      const stderrPath = join(dir, 'stderr');
      metadata.inputFetchStartTimestamp = now();
      await stageInputRoot(cache, inputRootDigest, inputRoot, signal);
      const workingDirectory = await createOutputParents(inputRoot, requested);
      metadata.inputFetchCompletedTimestamp = now();

      const timeoutMs = durationToMs(action.timeout);
      const run = await runner.run({
        argv: command.arguments,
        env: Object.fromEntries(command.environmentVariables.map((v) => [v.name, v.value])),
        cwd: workingDirectory,
        inputRoot,
        timeoutMs,
        signal,
        stdoutPath,
        stderrPath,
        platform: new Map(
          (action.platform?.properties.length ? action.platform : command.platform)?.properties.map((p) => [
            p.name,
            p.value,
          ]) ?? [],
        ),
      });
      metadata.executionStartTimestamp = toTimestamp(run.startedAt);
      metadata.executionCompletedTimestamp = toTimestamp(run.completedAt);
      metadata.virtualExecutionDuration = msToDuration(run.completedAt.getTime() - run.startedAt.getTime());
      if (run.cancelled) return { status: cancelledStatus() };

      metadata.outputUploadStartTimestamp = now();
      // A wrong-typed output still leaves stdout and stderr worth reporting.
      let collected: CollectedOutputs | undefined;
      let collectFailure: Status | undefined;
      try {
        collected = await collectOutputs({
          fn,
          inputRoot,
          workingDirectory,
          requested,
          directoryFormat: command.outputDirectoryFormat,
          signal,
        });
      } catch (err) {
        collectFailure = toStatus(err);
      }
      const [stdoutDigest, stderrDigest] = await Promise.all([
        digestFile(fn, stdoutPath, signal),
        digestFile(fn, stderrPath, signal),
      ]);
      await cas.uploadMissing(
        [
          ...(collected?.blobs ?? []),
          { digest: stdoutDigest, path: stdoutPath },
          { digest: stderrDigest, path: stderrPath },
        ],
        signal,
      );
      metadata.outputUploadCompletedTimestamp = now();
      metadata.workerCompletedTimestamp = now();
      const result: ActionResult = {
        outputFiles: collected?.outputFiles ?? [],
        outputFileSymlinks: collected?.outputFileSymlinks ?? [],
        outputSymlinks: collected?.outputSymlinks ?? [],
        outputDirectories: collected?.outputDirectories ?? [],
        outputDirectorySymlinks: collected?.outputDirectorySymlinks ?? [],
        exitCode: run.exitCode,
        stdoutRaw: Buffer.alloc(0),
        stdoutDigest,
        stderrRaw: Buffer.alloc(0),
        stderrDigest,
        executionMetadata: metadata,
      };
      const status: Status =
        collectFailure ??
        (run.timedOut
          ? {
              code: Code.DEADLINE_EXCEEDED,
              message: `the action timed out after ${(timeoutMs ?? 0) / 1000} s`,
              details: [],
            }
          : OK_STATUS);
      log.info(
        {
          action: actionName,
          exitCode: run.exitCode,
          code: Code[status.code],
          ms: run.completedAt.getTime() - run.startedAt.getTime(),
        },
        'action finished',
      );
      return { result, status };
    } catch (err) {
      if (signal.aborted) return { status: cancelledStatus() };
      const status = toStatus(err);
      log.warn(
        { action: actionName, code: Code[status.code], msg: status.message },
        'action failed before it could finish',
      );
      return { status };
    } finally {
      if (dir) await removeTree(dir);
    }
  }
}

function cancelledStatus(): Status {
  return { code: Code.CANCELLED, message: 'the lease was cancelled', details: [] };
}
