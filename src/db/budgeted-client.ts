import pg from 'pg';
import type { BudgetHolder, ConnectionSlots, ReadMeter } from './tenant-types';

/** Codes of the errors our own client raises (beside pg's SQLSTATEs), for classify(). */
export const ClientErrorCode = { QUERY_TIMEOUT: 'TENANT_QUERY_TIMEOUT', READ_LIMIT: 'TENANT_READ_LIMIT' } as const;

/** The server did not answer a query in time although it should have cancelled it itself (statement_timeout). */
export class QueryTimeoutError extends Error {
  readonly code = ClientErrorCode.QUERY_TIMEOUT;
  constructor() {
    super('the tenant database did not answer a query in time; the connection was closed');
    this.name = 'QueryTimeoutError';
  }
}

/** A request read more from its store's database than TENANT_MAX_READ_BYTES; the connection was cut. */
export class ReadLimitError extends Error {
  readonly code = ClientErrorCode.READ_LIMIT;
  constructor(limit: number) {
    super(`the tenant database returned more than ${limit} bytes for one request`);
    this.name = 'ReadLimitError';
  }
}

export interface ClientLimits {
  /** Most bytes one request (outside a request: one query) may read from tenant databases; 0 or absent: no limit. */
  maxReadBytes?: number;
  /** The meter of the request running now (see tenant-context's currentReadMeter); absent: each query alone. */
  readMeter?: () => ReadMeter | undefined;
}

const noMeter = (): undefined => undefined;

/**
 * A pg module whose clients take a slot before connecting and give it back when they end; handed to
 * Sequelize as its dialect module, so every connection of a tenant's pool is counted. Its clients also
 * count the bytes they read and close a connection whose query outlived the client-side timeout.
 */
export function budgetedPgModule(slots: ConnectionSlots, holder: BudgetHolder, limits: ClientLimits = {}): typeof pg {
  const limit = limits.maxReadBytes ?? 0;
  const currentReadMeter = limits.readMeter ?? noMeter;
  const send = pg.Client.prototype.query as (this: pg.Client, ...args: unknown[]) => unknown;
  type Callback = (err: Error | null, result?: unknown) => void;

  class BudgetedClient extends pg.Client {
    /** Sequelize's mark for a connection its pool must not lend again. */
    _invalid = false;
    /** The meter the query running now reads against: its request's, else its own. */
    private meter?: ReadMeter;

    override connect(): Promise<pg.Client>;
    override connect(callback: (err: Error | null, client?: pg.Client) => void): void;
    override connect(callback?: (err: Error | null, client?: pg.Client) => void): Promise<pg.Client> | void {
      const connected = slots.acquire(holder).then(async () => {
        try {
          await super.connect();
        } catch (err) {
          slots.release(holder);
          throw err;
        }
        slots.answered?.();
        this.once('end', () => slots.release(holder));
        // Ahead of pg's own parser: a chunk is counted before the query it completes can report success.
        if (limit > 0) this.connection.stream.prependListener('data', (chunk: Buffer) => this.count(chunk.length));
        return this as pg.Client;
      });
      if (!callback) return connected;
      connected.then(
        (client) => callback(null, client),
        (err: Error) => callback(err),
      );
    }

    // pg's query() has a dozen overloads (hence `any`); the forms Sequelize and TenantHandle use come here.
    override query(config: unknown, values?: unknown, callback?: unknown): any {
      const meter = limit > 0 ? (currentReadMeter() ?? { bytes: 0 }) : undefined;
      const cb = (typeof values === 'function' ? values : typeof callback === 'function' ? callback : undefined) as
        Callback | undefined;
      if (meter && meter.bytes > limit) {
        // An earlier query of this request went over the limit: nothing more is sent for it.
        const err = new ReadLimitError(limit);
        if (cb) return void process.nextTick(() => cb(err));
        return Promise.reject(err);
      }
      this.meter = meter;
      if (typeof (config as { submit?: unknown }).submit === 'function')
        return send.call(this, config, values, callback);
      if (cb) {
        const done: Callback = (err, result) => {
          const failure = this.outcome(err, meter);
          if (!failure) slots.answered?.();
          cb(failure, failure ? undefined : result);
        };
        return typeof values === 'function' ? send.call(this, config, done) : send.call(this, config, values, done);
      }
      // The promise form through pg's callback form: one promise per query, as pg's own would be.
      return new Promise((resolve, reject) => {
        send.call(this, config, values, (err: Error | null, result: unknown) => {
          const failure = this.outcome(err, meter);
          if (failure) reject(failure);
          else {
            slots.answered?.();
            resolve(result);
          }
        });
      });
    }

    /** The error a finished query reports, if any; a timed-out connection is closed here. */
    private outcome(err: Error | null, meter: ReadMeter | undefined): Error | null {
      if (this.meter === meter) this.meter = undefined;
      if (meter && meter.bytes > limit) return err instanceof ReadLimitError ? err : new ReadLimitError(limit);
      if (err?.message === 'Query read timeout') {
        // The query may still run and its answer may still come: nothing on this connection can be
        // trusted any more, and keeping it would keep its slot for as long as the server likes.
        const timeout = new QueryTimeoutError();
        this.cut(timeout);
        return timeout;
      }
      return err;
    }

    private count(bytes: number): void {
      const meter = this.meter;
      if (!meter) return;
      meter.bytes += bytes;
      if (meter.bytes > limit) this.cut(new ReadLimitError(limit));
    }

    /** Destroy the socket (pg fails the queries on it with `err`); the slot comes back with 'end'. */
    private cut(err: Error): void {
      if (this._invalid) return;
      this._invalid = true;
      this.connection.stream.destroy(err);
    }
  }
  return Object.assign(Object.create(pg) as typeof pg, { Client: BudgetedClient });
}
