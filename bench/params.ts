/**
 * Sizes and counts of one bench run. `full` is what the figures in docs/benchmarks.md
 * are measured with; `tiny` runs every scenario the same way, scaled down, so the
 * smoke test can keep the bench working in seconds.
 */
export interface Params {
  mode: 'full' | 'tiny';
  /** Bytes hashed, sent over the socket pair and written to disk by the limit probes. */
  limitBytes: number;
  /** Size of the one blob streamed through ByteStream. */
  streamBlobBytes: number;
  /** Bytes per WriteRequest of the streaming client. */
  streamChunkBytes: number;
  smallBlobs: { count: number; minBytes: number; maxBytes: number; concurrency: number };
  findMissing: { digestsPerRequest: number; requests: number; concurrency: number };
  actionCache: { entries: number; requests: number; concurrency: number };
  execution: { warmup: number; sequential: number; concurrent: number; concurrency: number };
  cacheHit: { warmup: number; requests: number };
}

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export const FULL: Params = {
  mode: 'full',
  limitBytes: 1 * GiB,
  streamBlobBytes: 1 * GiB,
  streamChunkBytes: 1 * MiB,
  smallBlobs: { count: 10_000, minBytes: 1 * KiB, maxBytes: 64 * KiB, concurrency: 8 },
  findMissing: { digestsPerRequest: 10_000, requests: 200, concurrency: 8 },
  actionCache: { entries: 1_000, requests: 20_000, concurrency: 64 },
  execution: { warmup: 20, sequential: 200, concurrent: 400, concurrency: 8 },
  cacheHit: { warmup: 20, requests: 1_000 },
};

export const TINY: Params = {
  mode: 'tiny',
  limitBytes: 16 * MiB,
  streamBlobBytes: 1 * MiB,
  streamChunkBytes: 256 * KiB,
  smallBlobs: { count: 200, minBytes: 1 * KiB, maxBytes: 64 * KiB, concurrency: 8 },
  findMissing: { digestsPerRequest: 100, requests: 20, concurrency: 8 },
  actionCache: { entries: 20, requests: 200, concurrency: 64 },
  execution: { warmup: 2, sequential: 5, concurrent: 16, concurrency: 8 },
  cacheHit: { warmup: 2, requests: 20 },
};
