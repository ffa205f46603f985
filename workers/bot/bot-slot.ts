import type { Logger } from 'pino';
import { Code } from '../../src/common/status.js';
import { ActionResult } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import {
  BotStatus,
  BotsService,
  LeaseState,
  type BotSession,
  type BotsClient,
  type Lease,
} from '../../src/gen/google/devtools/remoteworkers/v1test2/bots.js';
import type { Worker } from '../../src/gen/google/devtools/remoteworkers/v1test2/worker.js';
import type { LeaseOutcome } from './action-executor.js';
import { Backoff } from './backoff.js';
import { sleep } from '../../src/remote/concurrency.js';
import { toStatus } from './lease-status.js';
import { codeOf, unaryCall } from '../../src/remote/grpc-call.js';
import { ACTION_RESULT_TYPE_URL } from './lease-payload.js';

export interface SlotOptions {
  bots: BotsClient;
  instanceName: string;
  /** Stable across reconnects: the server lets a new session with the same bot_id replace the old one. */
  botId: string;
  /** Devices and properties advertised in the bot session. */
  worker: Worker;
  /** Runs a lease's payload; aborting the signal must stop it. */
  run: (lease: Lease, signal: AbortSignal) => Promise<LeaseOutcome>;
  log: Logger;
  /** gRPC deadline of UpdateBotSession; the server long-polls for a little less (default 40 s). */
  pollTimeoutMs?: number;
  /** Least time between two updates when the server answers at once with nothing new (default 1 s). */
  minIntervalMs?: number;
  backoff?: Backoff;
}

interface LocalLease {
  /** The lease as this bot reports it: ACTIVE while running, then COMPLETED with result and status. */
  lease: Lease;
  abort: AbortController;
  running: boolean;
  /** Given back because the worker is stopping: reported as CANCELLED so the server requeues it. */
  givenBack: boolean;
  done: Promise<void>;
}

const RECENT_LEASES = 64;
/** Deadline of the goodbye calls at stop (remex answers a second before the deadline). */
const FAREWELL_MS = 1200;

/**
 * One capacity slot of a worker: one bot session in the Remote Workers API, as BuildGrid
 * serves buildbox-worker. CreateBotSession, then UpdateBotSession in a loop that the
 * server holds open (long polling) until it has news. A PENDING lease is started at once
 * and reported ACTIVE; when it finishes the slot cuts the current poll short to report it
 * COMPLETED with Any(ActionResult) and a status. A lease the server marks CANCELLED, or
 * drops from the session, is aborted (its process group killed). NOT_FOUND or
 * INVALID_ARGUMENT means the session is gone: its leases are dropped and a new session is
 * created under the same bot_id. Any other failure (UNAVAILABLE while the server restarts)
 * is retried with backoff (0.2 s doubling to 5 s), for as long as the slot runs.
 */
export class BotSlot {
  private session: BotSession | undefined;
  /** True from CreateBotSession until an update succeeds. */
  private sessionFresh = false;
  private readonly leases = new Map<string, LocalLease>();
  /** Ids of leases this slot has finished with, so a stale echo never starts one again. */
  private readonly finished: string[] = [];
  private readonly stopping = new AbortController();
  private wakeController = new AbortController();
  private readonly backoff: Backoff;
  private loopDone: Promise<void> | undefined;
  private stopped: Promise<void> | undefined;

  constructor(private readonly options: SlotOptions) {
    this.backoff = options.backoff ?? new Backoff();
  }

  get botId(): string {
    return this.options.botId;
  }

  /** Leases currently running (for tests and metrics). */
  get runningLeases(): number {
    return [...this.leases.values()].filter((l) => l.running).length;
  }

  start(): void {
    this.loopDone ??= this.loop();
  }

  /**
   * Stops polling, kills running actions and tells the server (status BOT_TERMINATING):
   * unfinished leases are reported CANCELLED so that they run elsewhere, finished ones
   * COMPLETED. Best effort: an unreachable server just expires the session.
   */
  stop(): Promise<void> {
    this.stopped ??= (async () => {
      this.stopping.abort();
      await this.loopDone;
      for (const l of this.leases.values()) {
        if (l.running) {
          l.givenBack = true;
          l.abort.abort();
        }
      }
      await Promise.all([...this.leases.values()].map((l) => l.done));
      await this.farewell();
    })();
    return this.stopped;
  }

  /** Cuts the current poll (or pause) short so that news is reported at once. */
  private wake(): void {
    this.wakeController.abort();
  }

  private async loop(): Promise<void> {
    const { log } = this.options;
    while (!this.stopping.signal.aborted) {
      if (!this.session) {
        try {
          this.reconcile(await this.create(), []);
          this.sessionFresh = true;
          log.info({ session: this.session!.name }, 'bot session created');
        } catch (err) {
          if (this.stopping.signal.aborted) break;
          log.warn(
            { err: errorText(err), retryInMs: this.backoff.peek() },
            'CreateBotSession failed; retrying',
          );
          await this.backoff.wait(this.stopping.signal);
        }
        continue;
      }
      // Armed before the snapshot: news arriving after it aborts this round.
      this.wakeController = new AbortController();
      const round = AbortSignal.any([this.wakeController.signal, this.stopping.signal]);
      const sent = this.reportedLeases();
      const started = Date.now();
      let response: BotSession;
      try {
        response = await this.update(sent, BotStatus.OK, round, this.options.pollTimeoutMs ?? 40_000);
      } catch (err) {
        if (this.stopping.signal.aborted) break;
        if (this.wakeController.signal.aborted) continue; // we cut it short: report the news
        await this.onUpdateFailure(err, Date.now() - started);
        continue;
      }
      this.backoff.reset();
      this.sessionFresh = false;
      const changed = this.reconcile(response, sent);
      const elapsed = Date.now() - started;
      const minInterval = this.options.minIntervalMs ?? 1000;
      if (!changed && elapsed < minInterval) await sleep(minInterval - elapsed, round);
    }
  }

  private async onUpdateFailure(err: unknown, elapsedMs: number): Promise<void> {
    const { log } = this.options;
    const code = codeOf(err);
    if (code === Code.NOT_FOUND || code === Code.INVALID_ARGUMENT) {
      log.warn({ err: errorText(err) }, 'bot session ended; dropping its leases and creating a new one');
      for (const l of [...this.leases.values()]) this.drop(l, 'its bot session ended');
      this.session = undefined;
      // A session that fails right after being created points at a deeper problem: slow down.
      if (this.sessionFresh) await this.backoff.wait(this.stopping.signal);
      return;
    }
    if (code === Code.DEADLINE_EXCEEDED && elapsedMs >= (this.options.pollTimeoutMs ?? 40_000) - 100) {
      return; // the server held the poll to our deadline: simply poll again
    }
    log.warn({ err: errorText(err), retryInMs: this.backoff.peek() }, 'UpdateBotSession failed; retrying');
    await this.backoff.wait(this.stopping.signal);
  }

  private create(): Promise<BotSession> {
    const { bots, instanceName, botId, worker } = this.options;
    return unaryCall(
      bots,
      BotsService.createBotSession,
      {
        parent: instanceName,
        botSession: {
          name: '',
          botId,
          status: BotStatus.OK,
          worker,
          leases: [],
          expireTime: undefined,
          version: '',
        },
      },
      { signal: this.stopping.signal, timeoutMs: 30_000 },
    );
  }

  private update(leases: Lease[], status: BotStatus, signal: AbortSignal | undefined, timeoutMs: number) {
    const session = this.session!;
    return unaryCall(
      this.options.bots,
      BotsService.updateBotSession,
      {
        name: session.name,
        botSession: { ...session, botId: this.options.botId, status, worker: this.options.worker, leases },
        updateMask: ['status', 'leases'],
      },
      { signal, timeoutMs },
    );
  }

  /** The leases to report, as they stand now. */
  private reportedLeases(): Lease[] {
    return [...this.leases.values()].map((l) =>
      l.givenBack
        ? { ...l.lease, state: LeaseState.CANCELLED, result: undefined, status: undefined }
        : l.lease,
    );
  }

  /** Applies the server's view of the session; true when a lease was started or dropped. */
  private reconcile(response: BotSession, sent: readonly Lease[]): boolean {
    this.session = { ...response, leases: [] };
    let changed = false;
    for (const l of sent) {
      const local = this.leases.get(l.id);
      if (l.state === LeaseState.COMPLETED && local && !local.running) this.forget(l.id);
    }
    const listed = new Set<string>();
    for (const lease of response.leases) {
      listed.add(lease.id);
      const local = this.leases.get(lease.id);
      if (!local && lease.state === LeaseState.PENDING && !this.finished.includes(lease.id)) {
        this.startLease(lease);
        changed = true;
      } else if (local && lease.state === LeaseState.CANCELLED) {
        this.drop(local, 'the server cancelled it');
        changed = true;
      }
    }
    const reported = new Set(sent.map((l) => l.id));
    for (const local of [...this.leases.values()]) {
      if (reported.has(local.lease.id) && !listed.has(local.lease.id)) {
        this.drop(local, 'the server no longer lists it');
        changed = true;
      }
    }
    if (response.leases.filter((l) => l.state === LeaseState.PENDING).length > 1) {
      this.options.log.warn(
        { leases: response.leases.length },
        'the server assigned more than one lease to one slot',
      );
    }
    return changed;
  }

  private startLease(lease: Lease): void {
    const { log } = this.options;
    const abort = new AbortController();
    const local: LocalLease = {
      lease: { ...lease, state: LeaseState.ACTIVE, result: undefined, status: undefined },
      abort,
      running: true,
      givenBack: false,
      done: Promise.resolve(),
    };
    this.leases.set(lease.id, local);
    log.info({ lease: lease.id }, 'lease started');
    local.done = this.options
      .run(lease, abort.signal)
      .catch((err: unknown): LeaseOutcome => ({ status: toStatus(err) }))
      .then((outcome) => {
        local.running = false;
        if (this.leases.get(lease.id) !== local || local.givenBack) return;
        local.lease = {
          ...local.lease,
          state: LeaseState.COMPLETED,
          status: outcome.status,
          result: outcome.result && {
            typeUrl: ACTION_RESULT_TYPE_URL,
            value: Buffer.from(ActionResult.encode(outcome.result).finish()),
          },
        };
        log.info({ lease: lease.id, code: Code[outcome.status.code] }, 'lease completed');
        this.wake();
      });
  }

  /** Aborts a lease (killing its process group if it runs) and forgets it. */
  private drop(local: LocalLease, why: string): void {
    if (local.running) {
      this.options.log.info({ lease: local.lease.id, why }, 'aborting lease');
      local.abort.abort();
    }
    this.forget(local.lease.id);
  }

  private forget(id: string): void {
    this.leases.delete(id);
    this.finished.push(id);
    if (this.finished.length > RECENT_LEASES) this.finished.shift();
  }

  /** The last word to the server when stopping; gives back leases it assigned meanwhile. */
  private async farewell(): Promise<void> {
    if (!this.session) return;
    try {
      const sent = this.reportedLeases();
      const response = await this.update(sent, BotStatus.BOT_TERMINATING, undefined, FAREWELL_MS);
      const assigned = response.leases.filter((l) => l.state === LeaseState.PENDING);
      this.session = { ...response, leases: [] };
      if (assigned.length > 0) {
        await this.update(
          assigned.map((l) => ({ ...l, state: LeaseState.CANCELLED })),
          BotStatus.BOT_TERMINATING,
          undefined,
          FAREWELL_MS,
        );
      }
    } catch (err) {
      this.options.log.debug({ err: errorText(err) }, 'could not say goodbye to the server');
    }
  }
}

function errorText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
