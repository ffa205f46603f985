import { createServer, type Server } from 'node:http';
import { metricsContentType, renderMetrics } from '../common/metrics.js';
import { log } from '../common/log.js';

/** Serves GET /metrics (Prometheus text exposition) on host:port; resolves once listening. */
export async function startMetricsEndpoint(
  listen: string,
): Promise<{ address: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics is served here\n');
      return;
    }
    renderMetrics().then(
      (text) => res.writeHead(200, { 'content-type': metricsContentType }).end(text),
      (err: unknown) => {
        log.error({ err }, 'rendering metrics failed');
        res.writeHead(500, { 'content-type': 'text/plain' }).end('rendering metrics failed\n');
      },
    );
  });
  const sep = listen.lastIndexOf(':');
  const host = listen.slice(0, sep).replace(/^\[|\]$/g, '');
  const port = Number(listen.slice(sep + 1));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const bound = (server.address() as { port: number }).port;
  return {
    address: `${host}:${bound}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}
