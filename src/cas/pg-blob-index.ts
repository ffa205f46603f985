import type { Pool, QueryResultRow } from 'pg';
import { toRemexError } from '../common/error-mapping.js';
import { migrate, type Migration } from '../pg/migrate.js';
import { keyString, type BlobKey } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';
import type { BlobIndex } from './blob-index.js';

/** Schema of the CAS index (component "cas-index" in remex_migrations). */
export const MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'create cas_index',
    sql: `CREATE TABLE cas_index (
      namespace text NOT NULL,
      blob text NOT NULL,
      confirmed_at timestamptz NOT NULL,
      PRIMARY KEY (namespace, blob)
    )`,
  },
];

export interface PgBlobIndexOptions {
  pool: Pool;
  /**
   * Separates indexes sharing one table, one per backend (e.g. per bucket and prefix).
   * Default "".
   */
  namespace?: string;
  /** End the pool on close(); leave false when the pool is shared with other components. */
  ownsPool?: boolean;
  name?: string;
}

/**
 * BlobIndex in PostgreSQL: one row per blob in cas_index (namespace, blob = keyString,
 * confirmed_at). Each call is one statement over the whole batch (`= ANY($2)` arrays and
 * unnest), never one statement per blob; writes touch rows in sorted order so concurrent
 * batches cannot deadlock on each other.
 */
export class PgBlobIndex implements BlobIndex {
  readonly name: string;
  private readonly pool: Pool;
  private readonly namespace: string;

  private constructor(private readonly options: PgBlobIndexOptions) {
    this.name = options.name ?? 'cas-index';
    this.pool = options.pool;
    this.namespace = options.namespace ?? '';
  }

  /** Applies pending migrations, then returns the index. */
  static async open(options: PgBlobIndexOptions): Promise<PgBlobIndex> {
    const index = new PgBlobIndex(options);
    try {
      await migrate(options.pool, 'cas-index', MIGRATIONS);
    } catch (err) {
      throw toRemexError(err, index.name);
    }
    return index;
  }

  async lookup(keys: readonly BlobKey[], ctx: StoreContext): Promise<Map<string, number>> {
    const found = new Map<string, number>();
    if (keys.length === 0) return found;
    const { rows } = await this.query<{ blob: string; confirmed_at: Date }>(
      'lookup',
      'SELECT blob, confirmed_at FROM cas_index WHERE namespace = $1 AND blob = ANY($2::text[])',
      [this.namespace, keys.map(keyString)],
      ctx,
    );
    for (const row of rows) found.set(row.blob, row.confirmed_at.getTime());
    return found;
  }

  async add(keys: readonly BlobKey[], at: number, ctx: StoreContext): Promise<void> {
    if (keys.length === 0) return;
    // Distinct (an upsert may not touch a row twice) and sorted (a fixed lock order).
    await this.query(
      'add',
      `INSERT INTO cas_index (namespace, blob, confirmed_at)
       SELECT $1, blob, $3 FROM unnest($2::text[]) AS blob
       ON CONFLICT (namespace, blob) DO UPDATE SET confirmed_at = EXCLUDED.confirmed_at
       WHERE cas_index.confirmed_at < EXCLUDED.confirmed_at`,
      [this.namespace, distinctSorted(keys), new Date(at)],
      ctx,
    );
  }

  async confirm(keys: readonly BlobKey[], at: number, ctx: StoreContext): Promise<void> {
    if (keys.length === 0) return;
    await this.query(
      'confirm',
      `UPDATE cas_index SET confirmed_at = $3
       WHERE namespace = $1 AND blob = ANY($2::text[]) AND confirmed_at < $3`,
      [this.namespace, distinctSorted(keys), new Date(at)],
      ctx,
    );
  }

  async remove(keys: readonly BlobKey[], ctx: StoreContext): Promise<void> {
    if (keys.length === 0) return;
    await this.query(
      'remove',
      'DELETE FROM cas_index WHERE namespace = $1 AND blob = ANY($2::text[])',
      [this.namespace, distinctSorted(keys)],
      ctx,
    );
  }

  async close(): Promise<void> {
    if (this.options.ownsPool) await this.pool.end();
  }

  private async query<R extends QueryResultRow>(
    what: string,
    sql: string,
    params: unknown[],
    ctx: StoreContext,
  ) {
    try {
      // pg cannot cancel a statement by signal; at least do not start one for a cancelled call.
      ctx.signal?.throwIfAborted();
      return await this.pool.query<R>(sql, params);
    } catch (err) {
      throw toRemexError(err, `${this.name}: ${what}`);
    }
  }
}

function distinctSorted(keys: readonly BlobKey[]): string[] {
  return [...new Set(keys.map(keyString))].sort();
}
