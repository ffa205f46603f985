import { peakRss } from '../../test/helpers/remex-process.js';
import { JsonChild } from '../lib/child.js';
import { mbPerSecond } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * One large blob written and read back through ByteStream by a separate client process
 * (bench/stream-client.ts), so the client's work does not share the bench's event loop;
 * the server's peak RSS is read from /proc after both directions.
 */
export const casStreaming: Scenario = {
  name: 'CAS streaming',
  async run(server, { params }) {
    const client = new JsonChild('stream-client.ts', [
      server.address,
      String(params.streamBlobBytes),
      String(params.streamChunkBytes),
    ]);
    try {
      const r = await client.next<{ writeMs: number; readMs: number }>();
      await client.done();
      return {
        casWriteMBps: mbPerSecond(params.streamBlobBytes, r.writeMs),
        casReadMBps: mbPerSecond(params.streamBlobBytes, r.readMs),
        serverPeakRssMB: (await peakRss(server.child.pid!)) / 1e6,
      };
    } finally {
      client.kill();
    }
  },
};
