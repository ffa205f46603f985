import type { Duration } from '../../src/gen/google/protobuf/duration.js';
import type { Timestamp } from '../../src/gen/google/protobuf/timestamp.js';

/** A Date as a google.protobuf.Timestamp (millisecond precision). */
export function toTimestamp(date: Date): Timestamp {
  const ms = date.getTime();
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: (ms - seconds * 1000) * 1_000_000 };
}

/** A google.protobuf.Duration in milliseconds; undefined when unset or not positive (no limit). */
export function durationToMs(d: Duration | undefined): number | undefined {
  if (!d) return undefined;
  const ms = d.seconds * 1000 + Math.floor(d.nanos / 1_000_000);
  return ms > 0 ? ms : undefined;
}

/** Milliseconds as a google.protobuf.Duration. */
export function msToDuration(ms: number): Duration {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1_000_000) };
}

/** A google.protobuf.Timestamp in milliseconds since the epoch. */
export function timestampMs(t: Timestamp): number {
  return t.seconds * 1000 + Math.floor(t.nanos / 1_000_000);
}
