import type { StoreContext } from '../common/store-context.js';
import { sharedCounter, sharedHistogram, statusLabel } from '../common/metrics.js';
import type { KeyValueStore } from './kv-store.js';

const requests = () =>
  sharedCounter(
    'remex_kv_requests_total',
    'Key-value store calls, by store, operation and result (hit, miss, ok, error).',
    ['store', 'op', 'result'],
  );
const errors = () =>
  sharedCounter(
    'remex_kv_errors_total',
    'Key-value store calls that failed, by store, operation and status code.',
    ['store', 'op', 'code'],
  );
const durations = () =>
  sharedHistogram(
    'remex_kv_request_duration_seconds',
    'Key-value store call latency, by store and operation.',
    ['store', 'op'],
  );
const bytes = () =>
  sharedCounter(
    'remex_kv_bytes_total',
    'Value bytes read (get hits) and written (put), by store and direction.',
    ['store', 'direction'],
  );

/**
 * Counts and times the calls to a key-value store: get hits and misses, puts, errors by
 * status code, value bytes and latency, labelled `store=<name>`. Source of truth: the
 * child; values and errors pass through unchanged.
 */
export class MetricsKeyValueStore implements KeyValueStore {
  private readonly requests = requests();
  private readonly errors = errors();
  private readonly durations = durations();
  private readonly bytes = bytes();

  constructor(
    private readonly child: KeyValueStore,
    readonly name: string,
  ) {}

  async get(key: string, ctx: StoreContext): Promise<Buffer | undefined> {
    const value = await this.measure('get', () => this.child.get(key, ctx));
    this.requests.inc({ store: this.name, op: 'get', result: value === undefined ? 'miss' : 'hit' });
    if (value !== undefined) this.bytes.inc({ store: this.name, direction: 'read' }, value.length);
    return value;
  }

  async put(key: string, value: Buffer, ctx: StoreContext): Promise<void> {
    await this.measure('put', () => this.child.put(key, value, ctx));
    this.requests.inc({ store: this.name, op: 'put', result: 'ok' });
    this.bytes.inc({ store: this.name, direction: 'written' }, value.length);
  }

  async delete(key: string, ctx: StoreContext): Promise<void> {
    await this.measure('delete', () => this.child.delete(key, ctx));
    this.requests.inc({ store: this.name, op: 'delete', result: 'ok' });
  }

  async close(): Promise<void> {
    await this.child.close?.();
  }

  private async measure<T>(op: string, call: () => Promise<T>): Promise<T> {
    const stop = this.durations.startTimer({ store: this.name, op });
    try {
      return await call();
    } catch (err) {
      this.requests.inc({ store: this.name, op, result: 'error' });
      this.errors.inc({ store: this.name, op, code: statusLabel(err) });
      throw err;
    } finally {
      stop();
    }
  }
}
