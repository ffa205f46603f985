import type { Limits } from './limits.js';
import type { Params } from './params.js';

/** A figure of the table and the JSON: what it is, its unit, and the limits it is read against. */
export interface Figure {
  id: string;
  scenario: string;
  label: string;
  unit: string;
  /** When set, the figure is also given as a ratio to the smallest of these limits. */
  ratioTo?: (keyof Limits)[];
}

export const LIMIT_FIGURES: { id: keyof Limits; label: string; unit: string }[] = [
  { id: 'sha256MBps', label: 'SHA-256, one core (node:crypto)', unit: 'MB/s' },
  { id: 'tcpMBps', label: 'TCP loopback, socket pair between two processes', unit: 'MB/s' },
  { id: 'diskFsyncMBps', label: 'disk write + fsync in the data directory', unit: 'MB/s' },
];

export const LIMIT_NAMES: Record<keyof Limits, string> = {
  sha256MBps: 'sha256',
  tcpMBps: 'tcp',
  diskFsyncMBps: 'disk',
};

const count = (n: number) => n.toLocaleString('en-US');
const bytes = (n: number) =>
  n >= 2 ** 30 ? `${n / 2 ** 30} GiB` : n >= 2 ** 20 ? `${n / 2 ** 20} MiB` : `${n / 2 ** 10} KiB`;

/** Every figure a bench run produces, in table order. */
export function figures(p: Params): Figure[] {
  const writeLimits: (keyof Limits)[] = ['sha256MBps', 'tcpMBps', 'diskFsyncMBps'];
  const readLimits: (keyof Limits)[] = ['sha256MBps', 'tcpMBps'];
  const blob = `${bytes(p.streamBlobBytes)} blob`;
  const small = `${count(p.smallBlobs.count)} blobs of ${bytes(p.smallBlobs.minBytes)}–${bytes(p.smallBlobs.maxBytes)}`;
  const fmb = `${count(p.findMissing.digestsPerRequest)} digests, half present, ${p.findMissing.concurrency} callers`;
  const ac = `GetActionResult hits, ${p.actionCache.concurrency} callers`;
  const ex = p.execution;
  return [
    {
      id: 'casWriteMBps',
      scenario: 'CAS streaming',
      label: `ByteStream Write, ${blob}`,
      unit: 'MB/s',
      ratioTo: writeLimits,
    },
    {
      id: 'casReadMBps',
      scenario: 'CAS streaming',
      label: `ByteStream Read, ${blob}`,
      unit: 'MB/s',
      ratioTo: readLimits,
    },
    { id: 'serverPeakRssMB', scenario: 'CAS streaming', label: 'server peak RSS (VmHWM)', unit: 'MB' },
    {
      id: 'batchUpdateBlobsPerS',
      scenario: 'Small blobs',
      label: `BatchUpdateBlobs, ${small}`,
      unit: 'blobs/s',
    },
    {
      id: 'batchUpdateMBps',
      scenario: 'Small blobs',
      label: 'BatchUpdateBlobs, same run',
      unit: 'MB/s',
      ratioTo: writeLimits,
    },
    { id: 'batchReadBlobsPerS', scenario: 'Small blobs', label: `BatchReadBlobs, ${small}`, unit: 'blobs/s' },
    {
      id: 'batchReadMBps',
      scenario: 'Small blobs',
      label: 'BatchReadBlobs, same run',
      unit: 'MB/s',
      ratioTo: readLimits,
    },
    { id: 'findMissingRequestsPerS', scenario: 'FindMissingBlobs', label: fmb, unit: 'requests/s' },
    { id: 'findMissingP50Ms', scenario: 'FindMissingBlobs', label: 'latency p50', unit: 'ms' },
    { id: 'findMissingP99Ms', scenario: 'FindMissingBlobs', label: 'latency p99', unit: 'ms' },
    { id: 'actionCacheRequestsPerS', scenario: 'ActionCache', label: ac, unit: 'requests/s' },
    { id: 'actionCacheP50Ms', scenario: 'ActionCache', label: 'latency p50', unit: 'ms' },
    { id: 'actionCacheP99Ms', scenario: 'ActionCache', label: 'latency p99', unit: 'ms' },
    { id: 'execute1ActionsPerS', scenario: 'Execution', label: '/bin/true, 1 client', unit: 'actions/s' },
    { id: 'execute1P50Ms', scenario: 'Execution', label: 'Execute → COMPLETED p50, 1 client', unit: 'ms' },
    { id: 'execute1P99Ms', scenario: 'Execution', label: 'Execute → COMPLETED p99, 1 client', unit: 'ms' },
    {
      id: 'executeNActionsPerS',
      scenario: 'Execution',
      label: `/bin/true, ${ex.concurrency} clients`,
      unit: 'actions/s',
    },
    {
      id: 'executeNP50Ms',
      scenario: 'Execution',
      label: `Execute → COMPLETED p50, ${ex.concurrency} clients`,
      unit: 'ms',
    },
    {
      id: 'executeNP99Ms',
      scenario: 'Execution',
      label: `Execute → COMPLETED p99, ${ex.concurrency} clients`,
      unit: 'ms',
    },
    { id: 'cacheHitP50Ms', scenario: 'Cache hit', label: 'Execute of a cached action, p50', unit: 'ms' },
    { id: 'cacheHitP99Ms', scenario: 'Cache hit', label: 'Execute of a cached action, p99', unit: 'ms' },
  ];
}

/** The id of a figure's ratio in the JSON. */
export const ratioId = (id: string) => `${id.replace(/MBps$/, '')}Ratio`;

/** The figure divided by the smallest of the limits it is read against, and which limit that was. */
export function ratioOf(
  value: number,
  limits: Limits,
  to: (keyof Limits)[],
): { ratio: number; limit: keyof Limits } {
  const limit = to.reduce((a, b) => (limits[b] < limits[a] ? b : a));
  return { ratio: value / limits[limit], limit };
}
