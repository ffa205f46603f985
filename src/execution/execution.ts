import type { StoreContext } from '../common/store-context.js';
import { pack } from '../common/any.js';
import type { Cas } from '../cas/cas.js';
import { SHA256, validateDigest, type Digest, type DigestFunction } from '../common/digest.js';
import { Code, RemexError, invalidArgument, notFound } from '../common/status.js';
import { setLongTimeout } from '../common/timers.js';
import { Action, Command } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { PreconditionFailure } from '../gen/google/rpc/error_details.js';
import { ACTION_KIND, actionMergeKey, type ActionResults } from './action-results.js';
import { normalisePlatform } from './platform.js';
import { Stage, type Job, type JobRequest } from './scheduler/job.js';
import type { Scheduler } from './scheduler/scheduler.js';

export interface ExecuteInput {
  instance: string;
  fn: DigestFunction;
  actionDigest: Digest | undefined;
  skipCacheLookup: boolean;
  priority: number;
  invocation: string;
}

export interface ExecutionOptions {
  /** Accepted ExecutionPolicy.priority range (advertised in Capabilities). */
  minPriority: number;
  maxPriority: number;
  /** While an operation is unchanged, its stream repeats it this often (keeps proxies from cutting it). */
  keepaliveMs: number;
}

/** REAPI asks for MISSING violations naming each absent blob as "blobs/{hash}/{size}". */
function missingBlob(what: string, d: Digest): RemexError {
  const failure = PreconditionFailure.encode({
    violations: [
      {
        type: 'MISSING',
        subject: `blobs/${d.hash}/${d.sizeBytes}`,
        description: `${what} is not in the CAS`,
      },
    ],
  }).finish();
  return new RemexError(
    Code.FAILED_PRECONDITION,
    `${what} ${d.hash}/${d.sizeBytes} is not in the CAS; upload it first`,
    {
      details: [pack('google.rpc.PreconditionFailure', failure)],
    },
  );
}

/**
 * Execute semantics on top of the scheduler: validation, loading Action and Command,
 * the action cache lookup, and following an operation until it completes.
 */
export class Execution {
  constructor(
    readonly scheduler: Scheduler,
    private readonly cas: Cas,
    private readonly actionResults: ActionResults,
    readonly options: ExecutionOptions,
  ) {}

  async execute(input: ExecuteInput, ctx: StoreContext): Promise<Job> {
    const { fn, instance } = input;
    if (fn !== SHA256)
      throw invalidArgument(`execution supports the SHA256 digest function only, not ${fn.name}`);
    const digest = validateDigest(input.actionDigest, fn, 'action_digest');
    if (input.priority < this.options.minPriority || input.priority > this.options.maxPriority) {
      throw invalidArgument(
        `execution_policy.priority ${input.priority} is outside the supported range ${this.options.minPriority}..${this.options.maxPriority}`,
      );
    }
    const actionBytes = await this.load(fn, digest, 'action', ctx);
    let action: Action;
    try {
      action = Action.decode(actionBytes);
    } catch {
      throw invalidArgument(`action ${digest.hash}/${digest.sizeBytes} is not an Action message`);
    }
    const commandDigest = validateDigest(action.commandDigest, fn, 'action.command_digest');
    validateDigest(action.inputRootDigest, fn, 'action.input_root_digest');
    let command: Command;
    try {
      command = Command.decode(await this.load(fn, commandDigest, 'command', ctx));
    } catch (err) {
      if (err instanceof RemexError) throw err;
      throw invalidArgument(
        `command ${commandDigest.hash}/${commandDigest.sizeBytes} is not a Command message`,
      );
    }
    if (command.arguments.length === 0) throw invalidArgument('the command has no arguments');
    const platformSource = action.platform?.properties.length ? action.platform : command.platform;
    const request: JobRequest = {
      instance,
      kind: ACTION_KIND,
      payload: actionBytes,
      fn,
      digest,
      mergeKey: action.doNotCache ? undefined : actionMergeKey(fn, digest),
      platform: normalisePlatform(platformSource?.properties ?? []),
      priority: input.priority,
      invocation: input.invocation,
      timeoutMs: action.timeout ? action.timeout.seconds * 1000 + Math.floor(action.timeout.nanos / 1e6) : 0,
    };
    if (!input.skipCacheLookup && !action.doNotCache) {
      const hit = await this.actionResults.lookup(instance, fn, digest, ctx);
      if (hit) return await this.scheduler.recordCached(request, hit);
    }
    return await this.scheduler.submit(request);
  }

  private async load(fn: DigestFunction, d: Digest, what: string, ctx: StoreContext): Promise<Buffer> {
    try {
      return await this.cas.getBuffer({ fn, ...d }, ctx);
    } catch (err) {
      if (err instanceof RemexError && err.code === Code.NOT_FOUND) throw missingBlob(what, d);
      throw err;
    }
  }

  /**
   * Calls send with the operation now, on every change, and every keepaliveMs while
   * nothing changes, until it completes or the caller goes away.
   */
  async follow(name: string, send: (job: Job) => Promise<void>, signal: AbortSignal): Promise<void> {
    let changed = true;
    let wake: (() => void) | undefined;
    const unsubscribe = this.scheduler.watch(name, () => {
      changed = true;
      wake?.();
    });
    try {
      for (let first = true; ; first = false) {
        const job = await this.scheduler.get(name);
        if (!job)
          throw notFound(first ? `operation ${name} does not exist` : `operation ${name} was deleted`);
        if (changed) {
          changed = false;
          await send(job);
          if (job.stage === Stage.COMPLETED) return;
        }
        await new Promise<void>((resolve) => {
          const timer = setLongTimeout(() => {
            changed = true;
            done();
          }, this.options.keepaliveMs);
          const done = () => {
            timer.clear();
            signal.removeEventListener('abort', done);
            wake = undefined;
            resolve();
          };
          wake = done;
          signal.addEventListener('abort', done, { once: true });
        });
        if (signal.aborted) return;
      }
    } finally {
      unsubscribe();
    }
  }

  /** Resolves when the operation completes or after timeoutMs, whichever is first. */
  async waitDone(name: string, timeoutMs: number, signal: AbortSignal): Promise<Job> {
    // Subscribe before the first look, so a completion in between is not missed.
    let finish = () => {};
    const completed = new Promise<void>((resolve) => {
      const unsubscribe = this.scheduler.watch(name, (j) => {
        if (j.stage === Stage.COMPLETED) finish();
      });
      const timer = setLongTimeout(() => finish(), timeoutMs);
      finish = () => {
        unsubscribe();
        timer.clear();
        signal.removeEventListener('abort', finish);
        resolve();
      };
      signal.addEventListener('abort', finish, { once: true });
    });
    try {
      const job = await this.scheduler.get(name);
      if (!job) throw notFound(`operation ${name} does not exist`);
      if (job.stage === Stage.COMPLETED || signal.aborted) return job;
      await completed;
      const now = await this.scheduler.get(name);
      if (!now) throw notFound(`operation ${name} was deleted`);
      return now;
    } finally {
      finish();
    }
  }
}
