import pg from 'pg';
import { pgConfig } from '../../pg/connection.js';

/** How often the LISTEN connection proves it is alive (a half-open socket sends no error). */
const HEARTBEAT_MS = 10_000;

/**
 * The dedicated connection on which a PgScheduler replica LISTENs. Notifications carry
 * no state, only "look again at this": PostgreSQL stays the source of truth. When the
 * connection is lost it reconnects (with backoff) and calls onReconnect, since whatever
 * was notified in between is gone.
 */
export class PgListener {
  private client?: pg.Client;
  private closed = false;
  private retryMs = 100;
  private timer?: NodeJS.Timeout;
  private heartbeat?: NodeJS.Timeout;

  private constructor(
    private readonly url: string,
    private readonly channels: readonly string[],
    private readonly onNotify: (channel: string, payload: string) => void,
    private readonly onReconnect: () => void,
  ) {}

  static async start(
    url: string,
    channels: readonly string[],
    onNotify: (channel: string, payload: string) => void,
    onReconnect: () => void,
  ): Promise<PgListener> {
    const listener = new PgListener(url, channels, onNotify, onReconnect);
    await listener.connect();
    return listener;
  }

  private async connect(): Promise<void> {
    const client = new pg.Client(pgConfig(this.url));
    // Only an established connection is re-made; a failing connect() throws instead.
    const onLost = () => {
      if (this.client !== client) return;
      this.client = undefined;
      client.end().catch(() => {});
      this.scheduleReconnect();
    };
    client.on('notification', (msg) => this.onNotify(msg.channel, msg.payload ?? ''));
    client.on('error', onLost);
    client.on('end', onLost);
    try {
      await client.connect();
      for (const channel of this.channels) await client.query(`LISTEN ${pg.escapeIdentifier(channel)}`);
    } catch (err) {
      await client.end().catch(() => {});
      throw err;
    }
    if (this.closed) {
      await client.end().catch(() => {});
      return;
    }
    this.client = client;
    this.retryMs = 100;
    this.heartbeat ??= setInterval(() => {
      const current = this.client;
      // A query that fails or times out (query_timeout) means the connection is gone.
      current?.query('SELECT 1').catch(() => {
        if (this.client === current) {
          this.client = undefined;
          current.end().catch(() => {});
          this.scheduleReconnect();
        }
      });
    }, HEARTBEAT_MS);
    this.heartbeat.unref();
  }

  private scheduleReconnect(): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.connect().then(
        () => this.onReconnect(),
        () => {
          this.retryMs = Math.min(this.retryMs * 2, 5_000);
          this.scheduleReconnect();
        },
      );
    }, this.retryMs);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.heartbeat);
    const client = this.client;
    this.client = undefined;
    if (client) {
      client.removeAllListeners('end');
      client.removeAllListeners('error');
      client.on('error', () => {});
      await client.end().catch(() => {});
    }
  }
}
