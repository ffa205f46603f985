import { randomUUID } from 'node:crypto';
import { benchClients } from '../lib/clients.js';
import { executeTimed, uploadNoopActions } from '../lib/execution.js';
import { drive, percentile } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * Execute of an action whose result is already in the action cache: the setup runs it
 * once on a worker; then one client executes it again and again, and every answer must
 * be the cached result (cached_result set, nothing run).
 */
export const cacheHit: Scenario = {
  name: 'Cache hit',
  async run(server, { params }) {
    const p = params.cacheHit;
    const c = benchClients(server.address);
    const client = c.execution;
    try {
      const [action] = await uploadNoopActions(c, `bench-${randomUUID()}`, 1);
      await executeTimed(client, action!, false);
      await drive(p.warmup, 1, () => executeTimed(client, action!, true));
      const run = await drive(p.requests, 1, () => executeTimed(client, action!, true));
      return {
        cacheHitP50Ms: percentile(run.latencies, 50),
        cacheHitP99Ms: percentile(run.latencies, 99),
      };
    } finally {
      c.close();
    }
  },
};
