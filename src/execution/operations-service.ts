import type { OperationsServer } from '../gen/google/longrunning/operations.js';
import { invalidArgument, notFound } from '../common/status.js';
import { unary } from '../server/handlers.js';
import type { Execution } from './execution.js';
import { Stage, type Job } from './scheduler/job.js';
import { toOperation } from './operation.js';

const DEFAULT_PAGE = 100;
const DEFAULT_WAIT_MS = 60_000;

/** Parses the filters remex understands: "", "stage=QUEUED" (also EXECUTING, COMPLETED), "done=true|false". */
function parseFilter(filter: string): (job: Job) => boolean {
  const f = filter.trim();
  if (f === '') return () => true;
  const m = /^(stage|done)\s*=\s*"?([A-Za-z_]+)"?$/.exec(f);
  if (m?.[1] === 'stage') {
    const stage = Stage[m[2]!.toUpperCase() as keyof typeof Stage];
    if (stage !== undefined) return (job) => job.stage === stage;
  }
  if (m?.[1] === 'done' && (m[2] === 'true' || m[2] === 'false')) {
    const done = m[2] === 'true';
    return (job) => (job.stage === Stage.COMPLETED) === done;
  }
  throw invalidArgument(
    `unsupported filter "${filter}"; use stage=QUEUED|EXECUTING|COMPLETED or done=true|false`,
  );
}

export function operationsService(execution: Execution): OperationsServer {
  const scheduler = execution.scheduler;
  return {
    listOperations: unary('Operations/ListOperations', async (req) => {
      const keep = parseFilter(req.filter);
      const prefix = req.name.endsWith('operations') ? req.name.slice(0, -'operations'.length) : '';
      const offset = req.pageToken === '' ? 0 : Number(req.pageToken);
      if (!Number.isSafeInteger(offset) || offset < 0)
        throw invalidArgument(`page_token "${req.pageToken}" was not issued by this server`);
      const size = req.pageSize > 0 ? Math.min(req.pageSize, 1000) : DEFAULT_PAGE;
      const all = (await scheduler.list()).filter(
        (j) => (prefix === '' || j.name.startsWith(prefix)) && keep(j),
      );
      const page = all.slice(offset, offset + size);
      return {
        operations: page.map(toOperation),
        nextPageToken: offset + size < all.length ? String(offset + size) : '',
        unreachable: [],
      };
    }),
    getOperation: unary('Operations/GetOperation', async (req) => {
      const job = await scheduler.get(req.name);
      if (!job) throw notFound(`operation ${req.name} does not exist`);
      return toOperation(job);
    }),
    deleteOperation: unary('Operations/DeleteOperation', async (req) => {
      await scheduler.delete(req.name);
      return {};
    }),
    cancelOperation: unary('Operations/CancelOperation', async (req) => {
      await scheduler.cancel(req.name);
      return {};
    }),
    waitOperation: unary('Operations/WaitOperation', async (req, ctx) => {
      const timeoutMs = req.timeout ? req.timeout.seconds * 1000 + req.timeout.nanos / 1e6 : DEFAULT_WAIT_MS;
      return toOperation(await execution.waitDone(req.name, timeoutMs, ctx.signal));
    }),
  };
}
