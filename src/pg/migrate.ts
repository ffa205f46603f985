import type { Pool } from 'pg';

/** One numbered, intent-named schema change. Applied once, in version order, never edited after release. */
export interface Migration {
  version: number;
  /** What it does, e.g. "create operations and bot sessions". */
  name: string;
  sql: string;
}

/**
 * Brings a component's tables up to date at start. Each component (scheduler, CAS
 * index) keeps its own sequence in remex_migrations; replicas starting together are
 * serialised by an advisory lock, so each migration runs exactly once.
 */
export async function migrate(
  pool: Pool,
  component: string,
  migrations: readonly Migration[],
): Promise<number[]> {
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock(hashtext($1))', [`remex-migrate`]);
    try {
      await client.query(`CREATE TABLE IF NOT EXISTS remex_migrations (
        component text NOT NULL,
        version integer NOT NULL,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (component, version)
      )`);
      const { rows } = await client.query<{ version: number }>(
        'SELECT version FROM remex_migrations WHERE component = $1',
        [component],
      );
      const done = new Set(rows.map((r) => r.version));
      const applied: number[] = [];
      for (const m of [...migrations].sort((a, b) => a.version - b.version)) {
        if (done.has(m.version)) continue;
        await client.query('BEGIN');
        try {
          await client.query(m.sql);
          await client.query('INSERT INTO remex_migrations (component, version, name) VALUES ($1, $2, $3)', [
            component,
            m.version,
            m.name,
          ]);
          await client.query('COMMIT');
        } catch (err) {
          await client.query('ROLLBACK');
          throw new Error(
            `migration ${component} ${m.version} (${m.name}) failed: ${(err as Error).message}`,
            {
              cause: err,
            },
          );
        }
        applied.push(m.version);
      }
      return applied;
    } finally {
      await client.query('SELECT pg_advisory_unlock(hashtext($1))', [`remex-migrate`]);
    }
  } finally {
    client.release();
  }
}
