import { digestFunctionBySegment } from '../../common/digest.js';
import type { Offer, Property } from '../platform.js';
import type { Job, JobStatus, LeaseState } from './job.js';
import type { BotSession } from './scheduler-store.js';

/**
 * Mapping between PgSchedulerStore's rows and the scheduler's shapes (Job, BotSession).
 * The rows are the source of truth; a Job read from them is a snapshot.
 */

/** A row of scheduler_operations as pg returns it (bigint as string, bytea as Buffer). */
export interface OperationRow {
  name: string;
  seq: string;
  instance: string;
  kind: string;
  payload: Buffer;
  digest_function: string;
  digest_hash: string;
  digest_size: string;
  merge_key: string | null;
  platform: Property[];
  priority: number;
  invocation: string;
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
  result_type: string | null;
  result: Buffer | null;
  status: StoredStatus | null;
  cached_result: boolean;
  message: string;
  version: number;
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
const nullable = <T>(v: T | undefined): T | null => (v === undefined ? null : v);

export function rowToJob(row: OperationRow): Job {
  const fn = digestFunctionBySegment(row.digest_function);
  if (!fn) throw new Error(`operation ${row.name} has unknown digest function ${row.digest_function}`);
  return {
    name: row.name,
    instance: row.instance,
    kind: row.kind,
    payload: row.payload,
    fn,
    digest: { hash: row.digest_hash, sizeBytes: Number(row.digest_size) },
    mergeKey: row.merge_key ?? undefined,
    platform: row.platform,
    priority: row.priority,
    invocation: row.invocation,
    timeoutMs: Number(row.timeout_ms),
    stage: row.stage,
    seq: Number(row.seq),
    queuedAt: Number(row.queued_at),
    startedAt: optional(row.started_at),
    completedAt: optional(row.completed_at),
    attempts: row.attempts,
    unmatchedSince: optional(row.unmatched_since),
    leaseId: row.lease_id ?? undefined,
    leaseState: (row.lease_state ?? undefined) as LeaseState | undefined,
    botSession: row.bot_session ?? undefined,
    cancelNotice: row.cancel_notice_lease ?? undefined,
    cancelRequested: row.cancel_requested,
    result:
      row.result_type !== null && row.result !== null
        ? { typeUrl: row.result_type, value: row.result }
        : undefined,
    status: row.status ? statusFromRow(row.status) : undefined,
    cachedResult: row.cached_result,
    message: row.message,
    version: row.version,
  };
}

function statusToRow(status: JobStatus | undefined): StoredStatus | null {
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

/** The columns a job's life changes (all but its identity and payload), with their values. */
export function mutableColumns(job: Job): Record<string, unknown> {
  return {
    priority: job.priority,
    stage: job.stage,
    started_at: nullable(job.startedAt),
    completed_at: nullable(job.completedAt),
    attempts: job.attempts,
    unmatched_since: nullable(job.unmatchedSince),
    lease_id: nullable(job.leaseId),
    lease_state: nullable(job.leaseState),
    bot_session: nullable(job.botSession),
    cancel_requested: job.cancelRequested,
    cancel_notice_lease: nullable(job.cancelNotice),
    result_type: job.result?.typeUrl ?? null,
    result: job.result ? Buffer.from(job.result.value) : null,
    status: statusToRow(job.status),
    cached_result: job.cachedResult,
    message: job.message,
  };
}

/** Every column of a new job (seq comes from the table's sequence, version starts at 0). */
export function insertColumns(job: Job): Record<string, unknown> {
  return {
    name: job.name,
    instance: job.instance,
    kind: job.kind,
    payload: job.payload,
    digest_function: job.fn.segment,
    digest_hash: job.digest.hash,
    digest_size: job.digest.sizeBytes,
    merge_key: nullable(job.mergeKey),
    platform: JSON.stringify(job.platform),
    invocation: job.invocation,
    timeout_ms: job.timeoutMs,
    queued_at: job.queuedAt,
    ...mutableColumns(job),
  };
}

export function sessionFromRow(row: SessionRow): BotSession {
  return {
    name: row.name,
    botId: row.bot_id,
    instance: row.instance,
    offer: new Map(row.offer.map(([key, values]) => [key, new Set(values)])),
    expireAt: Number(row.expire_at),
    acceptsWork: row.accepts_work,
  };
}

export function offerToRow(offer: Offer): string {
  return JSON.stringify([...offer].map(([key, values]) => [key, [...values]]));
}
