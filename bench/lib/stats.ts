import { performance } from 'node:perf_hooks';

/** Milliseconds since an arbitrary origin, sub-millisecond resolution. */
export const now = (): number => performance.now();

/** The p-th percentile (0 < p ≤ 100) of the samples, by nearest rank. */
export function percentile(samples: readonly number[], p: number): number {
  if (samples.length === 0) throw new Error('percentile of no samples');
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * sorted.length);
  return sorted[Math.min(sorted.length, Math.max(1, rank)) - 1]!;
}

/** Megabytes (10^6 bytes) per second. */
export const mbPerSecond = (bytes: number, ms: number): number => bytes / 1e6 / (ms / 1000);

/** Operations per second. */
export const perSecond = (count: number, ms: number): number => count / (ms / 1000);

/**
 * Runs `total` calls of `fn` with `concurrency` callers, each taking the next index as
 * soon as its previous call finished. Returns each call's latency (ms) and the wall time
 * from the first call to the last answer.
 */
export async function drive(
  total: number,
  concurrency: number,
  fn: (index: number, caller: number) => Promise<unknown>,
): Promise<{ latencies: number[]; wallMs: number }> {
  const latencies: number[] = new Array<number>(total);
  let next = 0;
  const start = now();
  await Promise.all(
    Array.from({ length: Math.min(concurrency, total) }, async (_, caller) => {
      while (next < total) {
        const i = next++;
        const t0 = now();
        await fn(i, caller);
        latencies[i] = now() - t0;
      }
    }),
  );
  return { latencies, wallMs: now() - start };
}

/** Deterministic pseudo-random numbers (mulberry32), so every run uses the same sizes. */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
