import { digestFunctionBySegment } from '../common/digest.js';
import { ActionResult } from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Job, JobStatus } from './job.js';
import type { Offer, Property } from './platform.js';

/**
 * Mapping between PgScheduler's rows and the in-memory shapes (Job, Offer). The rows are
 * the source of truth; a Job read from them is a snapshot.
 */

/** A row of scheduler_operations as pg returns it (bigint as string, bytea as Buffer). */
export interface OperationRow {
  name: string;
  seq: string;
  instance: string;
  digest_function: string;
  action_hash: string;
  action_size: string;
  action: Buffer;
  platform: Property[];
  priority: number;
  invocation: string;
  do_not_cache: boolean;
  timeout_ms: string;
  stage: number;
  queued_at: string;
  started_at: string | null;
  completed_at: string | null;
  attempts: number;
  unmatched_since: string | null;
  lease_id: string | null;
  lease_state: number | null;
  bot_session: string | null;
  cancel_requested: boolean;
  cancel_notice_lease: string | null;
  result: Buffer | null;
  status: StoredStatus | null;
  cached_result: boolean;
  message: string;
}

/** JobStatus as jsonb: details' bytes in base64. */
interface StoredStatus {
  code: number;
  message: string;
  details?: { typeUrl: string; value: string }[];
}

export interface SessionRow {
  name: string;
  bot_id: string;
  instance: string;
  offer: [string, string[]][];
  expire_at: string;
  accepts_work: boolean;
}

const optional = (v: string | null): number | undefined => (v === null ? undefined : Number(v));

export function rowToJob(row: OperationRow): Job {
  const fn = digestFunctionBySegment(row.digest_function);
  if (!fn) throw new Error(`operation ${row.name} has unknown digest function ${row.digest_function}`);
  const job: Job = {
    name: row.name,
    instance: row.instance,
    fn,
    actionDigest: { hash: row.action_hash, sizeBytes: Number(row.action_size) },
    action: row.action,
    platform: row.platform,
    priority: row.priority,
    invocation: row.invocation,
    doNotCache: row.do_not_cache,
    timeoutMs: Number(row.timeout_ms),
    stage: row.stage,
    seq: Number(row.seq),
    queuedAt: Number(row.queued_at),
    startedAt: optional(row.started_at),
    completedAt: optional(row.completed_at),
    attempts: row.attempts,
    unmatchedSince: optional(row.unmatched_since),
    leaseId: row.lease_id ?? undefined,
    botSession: row.bot_session ?? undefined,
    cancelRequested: row.cancel_requested,
    result: row.result ? ActionResult.decode(row.result) : undefined,
    status: row.status ? statusFromRow(row.status) : undefined,
    cachedResult: row.cached_result,
    message: row.message,
  };
  return job;
}

export function statusToRow(status: JobStatus | undefined): StoredStatus | null {
  if (!status) return null;
  return {
    code: status.code,
    message: status.message,
    ...(status.details && {
      details: status.details.map((d) => ({ typeUrl: d.typeUrl, value: d.value.toString('base64') })),
    }),
  };
}

function statusFromRow(s: StoredStatus): JobStatus {
  return {
    code: s.code,
    message: s.message,
    ...(s.details && {
      details: s.details.map((d) => ({ typeUrl: d.typeUrl, value: Buffer.from(d.value, 'base64') })),
    }),
  };
}

export function resultToRow(result: ActionResult | undefined): Buffer | null {
  return result ? Buffer.from(ActionResult.encode(result).finish()) : null;
}

/** Columns and values to INSERT a new job (seq comes from the table's sequence). */
export function jobToInsert(job: Job): { columns: string[]; values: unknown[] } {
  const fields: Record<string, unknown> = {
    name: job.name,
    instance: job.instance,
    digest_function: job.fn.segment,
    action_hash: job.actionDigest.hash,
    action_size: job.actionDigest.sizeBytes,
    action: job.action,
    platform: JSON.stringify(job.platform),
    priority: job.priority,
    invocation: job.invocation,
    do_not_cache: job.doNotCache,
    timeout_ms: job.timeoutMs,
    stage: job.stage,
    queued_at: job.queuedAt,
    completed_at: job.completedAt ?? null,
    attempts: job.attempts,
    unmatched_since: job.unmatchedSince ?? null,
    cancel_requested: job.cancelRequested,
    result: resultToRow(job.result),
    status: statusToRow(job.status),
    cached_result: job.cachedResult,
    message: job.message,
  };
  return { columns: Object.keys(fields), values: Object.values(fields) };
}

export function offerToRow(offer: Offer): string {
  return JSON.stringify([...offer].map(([key, values]) => [key, [...values]]));
}

export function offerFromRow(row: SessionRow['offer']): Offer {
  return new Map(row.map(([key, values]) => [key, new Set(values)]));
}
