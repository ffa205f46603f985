import { randomUUID } from 'node:crypto';
import { benchClients } from '../lib/clients.js';
import { executeTimed, uploadNoopActions } from '../lib/execution.js';
import { drive, percentile, perSecond } from '../lib/stats.js';
import type { Scenario } from '../scenario.js';

/**
 * No-op actions end to end through Execute and the server's local workers: first one
 * client executing one action after another, then several clients (each on its own
 * connection) doing the same at once. A few actions run first, unmeasured, so the
 * workers are connected and warm.
 */
export const execution: Scenario = {
  name: 'Execution',
  async run(server, { params }) {
    const p = params.execution;
    const c = benchClients(server.address);
    // Each client on its own connection, as separate build tools would be.
    const clients = Array.from({ length: p.concurrency }, () => benchClients(server.address, true));
    try {
      const tag = `bench-${randomUUID()}`;
      const actions = await uploadNoopActions(c, tag, p.warmup + p.sequential + p.concurrent);
      const warmup = actions.slice(0, p.warmup);
      const sequential = actions.slice(p.warmup, p.warmup + p.sequential);
      const concurrent = actions.slice(p.warmup + p.sequential);

      await drive(warmup.length, p.concurrency, (i, caller) =>
        executeTimed(clients[caller]!.execution, warmup[i]!, false),
      );
      const one = await drive(sequential.length, 1, (i) =>
        executeTimed(clients[0]!.execution, sequential[i]!, false),
      );
      const many = await drive(concurrent.length, p.concurrency, (i, caller) =>
        executeTimed(clients[caller]!.execution, concurrent[i]!, false),
      );
      return {
        execute1ActionsPerS: perSecond(sequential.length, one.wallMs),
        execute1P50Ms: percentile(one.latencies, 50),
        execute1P99Ms: percentile(one.latencies, 99),
        executeNActionsPerS: perSecond(concurrent.length, many.wallMs),
        executeNP50Ms: percentile(many.latencies, 50),
        executeNP99Ms: percentile(many.latencies, 99),
      };
    } finally {
      c.close();
      for (const x of clients) x.close();
    }
  },
};
