import { createHash, randomBytes } from 'node:crypto';
import { open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { JsonChild } from './lib/child.js';
import { mbPerSecond, now } from './lib/stats.js';

/** The machine's limits, measured in the same run as the scenarios (MB/s, 10^6 bytes). */
export interface Limits {
  /** SHA-256 over `bytes` bytes on one core (node:crypto, this process's main thread). */
  sha256MBps: number;
  /** A plain TCP socket pair on loopback between two processes. */
  tcpMBps: number;
  /** Sequential writes to a new file in the data directory, then fsync; time includes the fsync. */
  diskFsyncMBps: number;
}

const PIECE = 1 << 20;

/** A pool of random 1 MiB pieces, reused round-robin (distinct enough to defeat caches that matter). */
function randomPool(bytes: number): Buffer[] {
  const count = Math.max(1, Math.min(64, Math.ceil(bytes / PIECE)));
  return Array.from({ length: count }, () => randomBytes(PIECE));
}

export function measureSha256(bytes: number): number {
  const pool = randomPool(bytes);
  const hash = createHash('sha256');
  const start = now();
  for (let done = 0, i = 0; done < bytes; i++) {
    const piece = pool[i % pool.length]!.subarray(0, bytes - done);
    hash.update(piece);
    done += piece.length;
  }
  hash.digest();
  return mbPerSecond(bytes, now() - start);
}

export async function measureTcp(bytes: number): Promise<number> {
  const sink = new JsonChild('tcp-peer.ts', ['sink']);
  let source: JsonChild | undefined;
  try {
    const { port } = await sink.next<{ port: number }>();
    source = new JsonChild('tcp-peer.ts', ['source', String(port), String(bytes), String(PIECE)]);
    const result = await sink.next<{ bytes: number; ms: number }>();
    await Promise.all([sink.done(), source.done()]);
    if (result.bytes !== bytes) throw new Error(`TCP sink received ${result.bytes} of ${bytes} bytes`);
    return mbPerSecond(result.bytes, result.ms);
  } finally {
    sink.kill();
    source?.kill();
  }
}

export async function measureDisk(dir: string, bytes: number): Promise<number> {
  const pool = randomPool(bytes);
  const file = join(dir, 'disk-limit.tmp');
  const handle = await open(file, 'wx');
  try {
    const start = now();
    for (let done = 0, i = 0; done < bytes; i++) {
      const piece = pool[i % pool.length]!.subarray(0, bytes - done);
      await handle.write(piece);
      done += piece.length;
    }
    await handle.sync();
    return mbPerSecond(bytes, now() - start);
  } finally {
    await handle.close();
    await rm(file, { force: true });
  }
}

/** Each probe runs this often; the best run is the limit (other work only ever lowers it). */
export const LIMIT_RUNS = 3;

export async function measureLimits(
  dataRoot: string,
  bytes: number,
  log: (m: string) => void,
): Promise<{ limits: Limits; samples: Record<keyof Limits, number[]> }> {
  const samples: Record<keyof Limits, number[]> = { sha256MBps: [], tcpMBps: [], diskFsyncMBps: [] };
  for (let run = 0; run < LIMIT_RUNS; run++) {
    samples.sha256MBps.push(measureSha256(bytes));
    samples.tcpMBps.push(await measureTcp(bytes));
    samples.diskFsyncMBps.push(await measureDisk(dataRoot, bytes));
    log(
      `limits, run ${run + 1}/${LIMIT_RUNS}: SHA-256 ${samples.sha256MBps[run]!.toFixed(0)} MB/s, ` +
        `TCP ${samples.tcpMBps[run]!.toFixed(0)} MB/s, disk+fsync ${samples.diskFsyncMBps[run]!.toFixed(0)} MB/s`,
    );
  }
  return {
    limits: {
      sha256MBps: Math.max(...samples.sha256MBps),
      tcpMBps: Math.max(...samples.tcpMBps),
      diskFsyncMBps: Math.max(...samples.diskFsyncMBps),
    },
    samples,
  };
}
