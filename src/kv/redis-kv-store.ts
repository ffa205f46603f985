import { Redis } from 'ioredis';
import type { StoreContext } from '../common/store-context.js';
import { toRemexError } from '../common/error-mapping.js';
import { Code, RemexError } from '../common/status.js';
import type { KeyValueStore } from './kv-store.js';

export interface RedisKeyValueStoreOptions {
  /** redis://[user:password@]host:port[/db] (rediss:// for TLS). */
  url: string;
  /** Prepended to every key, so several stores can share one Redis database. */
  keyPrefix?: string;
  /** Entries expire this long after they were last written; 0 or undefined keeps them. */
  ttlMs?: number;
  name?: string;
  /** How long one connection attempt, and a call waiting for it, may take (default 2000). */
  connectTimeoutMs?: number;
  /** How long a command may wait for its reply before it fails UNAVAILABLE (default 5000). */
  commandTimeoutMs?: number;
  /** Longest pause between reconnection attempts while Redis is down (default 2000). */
  maxReconnectDelayMs?: number;
}

/**
 * Key-value store in Redis (the ActionCache of the BuildGrid deployment). Source of
 * truth: the Redis server; eviction beyond its memory is Redis's own policy (maxmemory,
 * maxmemory-policy), expiry is per entry (SET … PX ttlMs).
 *
 * Calls never queue while Redis is unreachable: a call made while the client is
 * disconnected fails UNAVAILABLE at once, one made during a connection attempt waits
 * for it at most connectTimeoutMs, and a command that gets no reply within
 * commandTimeoutMs fails UNAVAILABLE. The client keeps reconnecting in the background
 * (backoff doubling up to maxReconnectDelayMs), so the same store works again as soon
 * as Redis is back.
 */
export class RedisKeyValueStore implements KeyValueStore {
  readonly name: string;
  private readonly client: Redis;
  private readonly where: string;
  private readonly connectTimeoutMs: number;
  private readonly commandTimeoutMs: number;
  private readonly ttlMs: number;
  private lastError: Error | undefined;
  private connecting: Promise<void> | undefined;
  private closed = false;

  constructor(options: RedisKeyValueStoreOptions) {
    this.name = options.name ?? 'redis';
    this.connectTimeoutMs = options.connectTimeoutMs ?? 2000;
    this.commandTimeoutMs = options.commandTimeoutMs ?? 5000;
    this.ttlMs = options.ttlMs ?? 0;
    if (!Number.isSafeInteger(this.ttlMs) || this.ttlMs < 0)
      throw new RemexError(Code.INVALID_ARGUMENT, `${this.name}: ttlMs must be a whole number ≥ 0`);
    const maxDelay = options.maxReconnectDelayMs ?? 2000;
    this.client = new Redis(options.url, {
      keyPrefix: options.keyPrefix,
      connectTimeout: this.connectTimeoutMs,
      commandTimeout: this.commandTimeoutMs,
      enableOfflineQueue: false,
      // Commands in flight when the connection drops fail at once rather than wait to be resent.
      maxRetriesPerRequest: 0,
      retryStrategy: (attempt) => Math.min(50 * 2 ** Math.min(attempt, 16), maxDelay),
    });
    const { host, port } = this.client.options;
    this.where = `redis at ${host ?? 'localhost'}:${port ?? 6379}`; // never the URL: it may hold a password
    // Without a listener ioredis prints every failed reconnection attempt to the console.
    this.client.on('error', (err: Error) => {
      this.lastError = err;
    });
    this.client.on('ready', () => {
      this.lastError = undefined;
    });
  }

  async get(key: string, ctx: StoreContext): Promise<Buffer | undefined> {
    const value = await this.call(ctx, () => this.client.getBuffer(key));
    return value ?? undefined;
  }

  async put(key: string, value: Buffer, ctx: StoreContext): Promise<void> {
    await this.call(ctx, () =>
      this.ttlMs > 0 ? this.client.set(key, value, 'PX', this.ttlMs) : this.client.set(key, value),
    );
  }

  async delete(key: string, ctx: StoreContext): Promise<void> {
    await this.call(ctx, () => this.client.del(key));
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.client.status === 'ready') {
      try {
        await this.client.quit();
        return;
      } catch {
        // Lost the connection while quitting: fall through and drop it.
      }
    }
    this.client.disconnect();
  }

  private async call<T>(ctx: StoreContext, command: () => Promise<T>): Promise<T> {
    ctx.signal?.throwIfAborted();
    await this.connected(ctx);
    try {
      return await command();
    } catch (err) {
      const mapped = toRemexError(err, `${this.name} (${this.where})`);
      if (err instanceof Error && err.message === 'Command timed out')
        throw this.unavailable(`no reply within ${this.commandTimeoutMs} ms`, err);
      // Connection errors get one message shape, whichever way ioredis words them.
      if (mapped.code === Code.UNAVAILABLE && err instanceof Error)
        throw this.unavailable(
          lostConnection.test(err.message) || err.name === 'MaxRetriesPerRequestError'
            ? 'the connection was lost'
            : err.message,
          err,
        );
      throw mapped;
    }
  }

  /** Resolves when the client is ready; fails UNAVAILABLE rather than wait for a server that is down. */
  private async connected(ctx: StoreContext): Promise<void> {
    if (this.closed) throw this.unavailable('the store is closed');
    switch (this.client.status) {
      case 'ready':
        return;
      case 'end':
      case 'close':
        throw this.unavailable('the connection is closed');
      case 'reconnecting':
        throw this.unavailable('not connected, reconnecting');
      default: // wait, connecting, connect: an attempt is under way
        await abortable(this.attempt(), ctx.signal);
    }
  }

  /** One promise per connection attempt, shared by every call waiting for it. */
  private attempt(): Promise<void> {
    this.connecting ??= new Promise<void>((resolve, reject) => {
      const settle = (err?: RemexError) => {
        clearTimeout(timer);
        this.client.off('ready', onReady).off('close', onClose);
        this.connecting = undefined;
        if (err) reject(err);
        else resolve();
      };
      const onReady = () => settle();
      const onClose = () => settle(this.unavailable('could not connect'));
      const timer = setTimeout(
        () => settle(this.unavailable(`not connected after ${this.connectTimeoutMs} ms`)),
        this.connectTimeoutMs,
      );
      timer.unref();
      this.client.once('ready', onReady).once('close', onClose);
    });
    return this.connecting;
  }

  private unavailable(what: string, cause?: Error): RemexError {
    const reason = cause ?? this.lastError;
    // The last connection error says why the server is unreachable (e.g. ECONNREFUSED).
    const detail = !cause && reason ? ` (${reason.message})` : '';
    return new RemexError(Code.UNAVAILABLE, `${this.name}: ${this.where} is unavailable: ${what}${detail}`, {
      cause: reason,
    });
  }
}

/** ioredis's messages for a command sent on, or caught by, a connection that went away. */
const lostConnection = /^(Connection is closed|Stream isn't writeable)/;

function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () =>
      reject(new RemexError(Code.CANCELLED, 'operation cancelled', { cause: signal.reason }));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}
