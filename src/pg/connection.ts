import type pg from 'pg';

/**
 * Connection settings for every PostgreSQL client remex opens (scheduler pool, its
 * LISTEN connection, CAS index pools). pg's defaults wait forever: a database behind a
 * partition or a dead NAT entry would hang calls for the kernel's TCP timeouts (many
 * minutes). With these, a connect fails after 5 s, a query after 30 s (client side and
 * server side), dead sockets are found by TCP keepalive, and a transaction left idle by
 * a stuck caller is ended by the server after 60 s so it cannot hold row locks.
 */
export function pgConfig(url: string, extra: pg.PoolConfig = {}): pg.PoolConfig {
  return {
    connectionString: url,
    connectionTimeoutMillis: 5_000,
    query_timeout: 30_000,
    statement_timeout: 30_000,
    idle_in_transaction_session_timeout: 60_000,
    keepAlive: true,
    keepAliveInitialDelayMillis: 10_000,
    ...extra,
  };
}
