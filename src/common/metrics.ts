import { Counter, Histogram, Registry } from 'prom-client';
import { toRemexError } from './error-mapping.js';
import { Code } from './status.js';

/**
 * The process's one Prometheus registry. Metrics are created once per metric name and
 * shared by every store, service or worker that reports them; instances are told apart
 * by labels (e.g. `store="cas-fast"`), never by registering a metric per instance.
 */
export const metricsRegistry = new Registry();

/** The Content-Type header for renderMetrics()'s text. */
export const metricsContentType: string = metricsRegistry.contentType;

/** The text exposition of every registered metric (what GET /metrics answers). */
export function renderMetrics(): Promise<string> {
  return metricsRegistry.metrics();
}

/** Seconds buckets for store calls: from a memory hit (~0.1 ms) to a slow S3 read. */
export const storeLatencyBuckets = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30];

/** The counter registered under name, created on first use and reused afterwards. */
export function sharedCounter<L extends string>(
  name: string,
  help: string,
  labelNames: readonly L[],
): Counter<L> {
  const existing = metricsRegistry.getSingleMetric(name);
  if (existing) {
    if (!(existing instanceof Counter))
      throw new Error(`metric ${name} is already registered with another type`);
    return existing as Counter<L>;
  }
  return new Counter({ name, help, labelNames, registers: [metricsRegistry] });
}

/** The histogram registered under name, created on first use and reused afterwards. */
export function sharedHistogram<L extends string>(
  name: string,
  help: string,
  labelNames: readonly L[],
  buckets: number[] = storeLatencyBuckets,
): Histogram<L> {
  const existing = metricsRegistry.getSingleMetric(name);
  if (existing) {
    if (!(existing instanceof Histogram))
      throw new Error(`metric ${name} is already registered with another type`);
    return existing as Histogram<L>;
  }
  return new Histogram({ name, help, labelNames, buckets, registers: [metricsRegistry] });
}

/** The status code name of a thrown value, for an error label ("NOT_FOUND", "UNAVAILABLE"). */
export function statusLabel(err: unknown): string {
  const code = toRemexError(err).code;
  return Code[code] ?? String(code);
}
