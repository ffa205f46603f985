import {
  BotStatus,
  type BotSession,
  type BotsServer,
  type Lease,
} from '../gen/google/devtools/remoteworkers/v1test2/bots.js';
import { pack } from '../common/any.js';
import type { Instances } from '../common/instances.js';
import { invalidArgument } from '../common/status.js';
import { unary } from '../server/handlers.js';
import { offerOf } from '../execution/platform.js';
import { LeaseState } from '../execution/scheduler/job.js';
import type { LeaseReport, Scheduler, SessionView } from '../execution/scheduler/scheduler.js';

export interface BotsOptions {
  /** Longest time an UpdateBotSession is held waiting for work (long polling). */
  pollMs: number;
}

/**
 * The Remote Workers API as BuildGrid serves it to buildbox-worker: one lease per bot
 * session. A lease carries its job's payload as Any (an Action for remote execution); the
 * result comes back as Any (an ActionResult) and is handed to the scheduler as it came.
 */
export function botsService(scheduler: Scheduler, instances: Instances, options: BotsOptions): BotsServer {
  const toProto = (view: SessionView, reported: BotSession): BotSession => ({
    ...reported,
    name: view.name,
    botId: view.botId,
    expireTime: { seconds: Math.floor(view.expireAt / 1000), nanos: (view.expireAt % 1000) * 1e6 },
    leases: view.leases.map((l): Lease => ({
      id: l.id,
      payload: pack(l.job.kind, l.job.payload),
      result: undefined,
      state: l.state as number,
      status: undefined,
      requirements: undefined,
      expireTime: undefined,
      assignment: '',
      inlineAssignment: undefined,
    })),
  });

  return {
    createBotSession: unary('Bots/CreateBotSession', async (req) => {
      instances.check(req.parent);
      const session = req.botSession;
      if (!session) throw invalidArgument('bot_session is required');
      const worker = session.worker;
      const offer = offerOf([...(worker?.properties ?? []), ...(worker?.devices[0]?.properties ?? [])]);
      return toProto(await scheduler.createBotSession(req.parent, session.botId, offer), session);
    }),
    updateBotSession: unary('Bots/UpdateBotSession', async (req, ctx) => {
      const session = req.botSession;
      if (!session) throw invalidArgument('bot_session is required');
      const reports: LeaseReport[] = session.leases.map((l) => ({
        id: l.id,
        state: l.state as number as LeaseState,
        result: l.result,
        status: l.status
          ? { code: l.status.code, message: l.status.message, details: l.status.details }
          : undefined,
      }));
      // Answer a little before the client's deadline, so a lease found late is not lost in transit.
      const untilDeadline = ctx.deadline === undefined ? Infinity : ctx.deadline - Date.now() - 1000;
      const waitMs = Math.max(0, Math.min(options.pollMs, untilDeadline));
      const view = await scheduler.updateBotSession(
        req.name,
        reports,
        waitMs,
        ctx.signal,
        session.status === BotStatus.OK,
      );
      return toProto(view, session);
    }),
  };
}
