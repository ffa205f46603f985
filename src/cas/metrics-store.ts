import { Transform, pipeline, type Readable } from 'node:stream';
import { sharedCounter, sharedHistogram, statusLabel } from '../common/metrics.js';
import type { BlobKey, BlobStore, ReadRange } from './blob-store.js';
import type { StoreContext } from '../common/store-context.js';

const metrics = () => ({
  requests: sharedCounter('remex_blobstore_requests_total', 'CAS store calls, by store and operation.', [
    'store',
    'op',
  ]),
  errors: sharedCounter(
    'remex_blobstore_errors_total',
    'CAS store calls (and read streams) that failed, by store, operation and status code.',
    ['store', 'op', 'code'],
  ),
  durations: sharedHistogram(
    'remex_blobstore_request_duration_seconds',
    'CAS store call latency, by store and operation; for get, until the stream is handed back.',
    ['store', 'op'],
  ),
  bytesRead: sharedCounter(
    'remex_blobstore_read_bytes_total',
    'Bytes streamed out of the CAS store by get.',
    ['store'],
  ),
  bytesWritten: sharedCounter(
    'remex_blobstore_written_bytes_total',
    'Bytes of blobs stored by put and putFile.',
    ['store'],
  ),
  keysAsked: sharedCounter('remex_blobstore_find_missing_keys_total', 'Digests asked about in findMissing.', [
    'store',
  ]),
  keysMissing: sharedCounter(
    'remex_blobstore_find_missing_missing_total',
    'Digests findMissing reported missing.',
    ['store'],
  ),
});

type Op = 'get' | 'put' | 'put_file' | 'find_missing';

/**
 * Counts and times the calls to a CAS store, labelled `store=<name>` (the name of this
 * node in the config): calls, errors by status code, latency, bytes read and written,
 * digests asked and missing in findMissing. Source of truth: the child; data and errors
 * pass through unchanged. The metrics are registered once in the shared registry
 * (src/common/metrics.ts), however many of these stores exist.
 */
export class MetricsBlobStore implements BlobStore {
  readonly putFile?: (key: BlobKey, path: string, ctx: StoreContext) => Promise<void>;
  private readonly m = metrics();

  constructor(
    private readonly child: BlobStore,
    readonly name: string,
  ) {
    if (child.putFile) {
      const putFile = child.putFile.bind(child);
      this.putFile = async (key, path, ctx) => {
        await this.measure('put_file', () => putFile(key, path, ctx));
        this.m.bytesWritten.inc({ store: this.name }, key.sizeBytes);
      };
    }
  }

  async get(key: BlobKey, range: ReadRange | undefined, ctx: StoreContext): Promise<Readable> {
    const source = await this.measure('get', () => this.child.get(key, range, ctx));
    // Count bytes as they are delivered, without changing the stream's flow or chunking.
    const counted = new Transform({
      transform: (chunk: Buffer, _enc, done) => {
        this.m.bytesRead.inc({ store: this.name }, chunk.length);
        done(null, chunk);
      },
    });
    pipeline(source, counted, (err) => {
      // A reader that stops early is not the store's failure.
      if (err && (err as NodeJS.ErrnoException).code !== 'ERR_STREAM_PREMATURE_CLOSE')
        this.m.errors.inc({ store: this.name, op: 'get', code: statusLabel(err) });
    });
    return counted;
  }

  async put(key: BlobKey, data: Readable, ctx: StoreContext): Promise<void> {
    await this.measure('put', () => this.child.put(key, data, ctx));
    this.m.bytesWritten.inc({ store: this.name }, key.sizeBytes);
  }

  async findMissing(keys: readonly BlobKey[], ctx: StoreContext): Promise<BlobKey[]> {
    const missing = await this.measure('find_missing', () => this.child.findMissing(keys, ctx));
    this.m.keysAsked.inc({ store: this.name }, keys.length);
    this.m.keysMissing.inc({ store: this.name }, missing.length);
    return missing;
  }

  async close(): Promise<void> {
    await this.child.close?.();
  }

  private async measure<T>(op: Op, call: () => Promise<T>): Promise<T> {
    this.m.requests.inc({ store: this.name, op });
    const stop = this.m.durations.startTimer({ store: this.name, op });
    try {
      return await call();
    } catch (err) {
      this.m.errors.inc({ store: this.name, op, code: statusLabel(err) });
      throw err;
    } finally {
      stop();
    }
  }
}
