import {
  BaseError,
  ConnectionError,
  ForeignKeyConstraintError,
  TimeoutError,
  UniqueConstraintError,
  ValidationError,
} from 'sequelize';
import { AppError, ErrorCode, fail } from '../lib/errors';

/** Postgres SQLSTATE codes we answer for. */
export const PgCode = {
  UNIQUE_VIOLATION: '23505',
  FOREIGN_KEY_VIOLATION: '23503',
  CHECK_VIOLATION: '23514',
  NOT_NULL_VIOLATION: '23502',
  INVALID_TEXT_REPRESENTATION: '22P02',
  SERIALIZATION_FAILURE: '40001',
  DEADLOCK_DETECTED: '40P01',
  INVALID_PASSWORD: '28P01',
  INVALID_AUTHORIZATION: '28000',
  INVALID_CATALOG_NAME: '3D000',
  TOO_MANY_CONNECTIONS: '53300',
  CANNOT_CONNECT_NOW: '57P03',
  ADMIN_SHUTDOWN: '57P01',
  /** statement_timeout (or a cancel request) stopped the statement. */
  QUERY_CANCELED: '57014',
  /** lock_timeout ran out waiting for a lock. */
  LOCK_NOT_AVAILABLE: '55P03',
  /** idle_in_transaction_session_timeout ended the session. */
  IDLE_IN_TRANSACTION_TIMEOUT: '25P03',
  /**
   * Ours: a write reached a store database that is being (or has been) moved to another server, after its
   * writes were frozen for the switch (src/moves/change-capture.ts). Nothing was written; ask again.
   */
  STORE_MOVED: 'TMOVE',
} as const;

/**
 * Unique indexes whose violation is the client's conflict (a value someone else holds, or a race lost to
 * them), and the code each answers with. A violation of any other index stays a plain 409 CONFLICT.
 */
const UNIQUE_INDEX_CODES: Record<string, ErrorCode> = {
  users_email_key: ErrorCode.EMAIL_TAKEN, // master users and each tenant's users
  stores_slug_key: ErrorCode.SLUG_TAKEN,
  store_hostnames_verified_key: ErrorCode.HOSTNAME_TAKEN,
  products_sku_key: ErrorCode.SKU_TAKEN,
};

/** The name of the constraint a pg or Sequelize error broke, wherever it is nested. */
export const constraintOf = (err: unknown): string | undefined => nestedField(err, 'constraint');

/**
 * For a `.catch`: a violation of a unique index named in UNIQUE_INDEX_CODES is thrown as its code with this
 * detail; any other error is thrown as it came.
 */
export const rethrowTaken =
  (detail: string) =>
  (err: unknown): never => {
    const code = pgCode(err) === PgCode.UNIQUE_VIOLATION ? UNIQUE_INDEX_CODES[constraintOf(err) ?? ''] : undefined;
    throw code ? fail(code, detail) : err;
  };

const CONNECTION_ERRNOS = new Set(['ECONNREFUSED', 'ECONNRESET', 'ETIMEDOUT', 'ENOTFOUND', 'EHOSTUNREACH', 'EPIPE']);

/** A string field of an error or of the pg error Sequelize (or a cause) wraps in it. */
function nestedField(err: unknown, field: 'code' | 'constraint'): string | undefined {
  let e = err as { [f in typeof field]?: unknown } & { parent?: unknown; original?: unknown; cause?: unknown };
  for (let depth = 0; e && depth < 4; depth++) {
    const value = e[field];
    if (typeof value === 'string') return value;
    e = (e.parent ?? e.original ?? e.cause) as typeof e;
  }
  return undefined;
}

/** The SQLSTATE (or socket errno) of a pg or Sequelize error, wherever it is nested. */
export const pgCode = (err: unknown): string | undefined => nestedField(err, 'code');

/** Whether an error means the database could not be reached or refused the session (not a bad query). */
export function isConnectionFailure(err: unknown): boolean {
  if (err instanceof ConnectionError || err instanceof TimeoutError) return true;
  const code = pgCode(err);
  if (
    code &&
    (CONNECTION_ERRNOS.has(code) ||
      code.startsWith('08') ||
      code.startsWith('28') ||
      code.startsWith('57P') ||
      code === PgCode.INVALID_CATALOG_NAME ||
      code === PgCode.TOO_MANY_CONNECTIONS)
  )
    return true;
  const message = (err as Error)?.message ?? '';
  return /Connection terminated|timeout expired|connect ETIMEDOUT/i.test(message);
}

/**
 * A connection failure that says nothing about the store's own database or credentials: the connection
 * timed out or was dropped on the way. Overload when the server answers the others, a dead server when not.
 */
export function isTransientConnectionFailure(err: unknown): boolean {
  const code = pgCode(err);
  if (code === 'ETIMEDOUT' || code === 'ECONNRESET' || code === 'EPIPE') return true;
  const message = (err as Error)?.message ?? '';
  return /timeout expired|due to connection timeout|connect ETIMEDOUT/i.test(message);
}

/**
 * Whether the server refused a new session because it has no slot left: 53300, both "sorry, too many clients
 * already" and "remaining connection slots are reserved for …". Overload of the server, not a failing database.
 */
export function isServerFull(err: unknown): boolean {
  return pgCode(err) === PgCode.TOO_MANY_CONNECTIONS;
}

/** A write refused by a frozen (moving) store database: the same answer as a store held for its migration. */
export const storeMovingRefusal = (): AppError =>
  fail(ErrorCode.TENANT_MIGRATING, "This store's database is being moved; try again shortly", {
    retryAfterSeconds: 2,
  });

/**
 * The one place where database errors become API errors. Constraint names and SQL never reach the client.
 * Returns undefined for errors that are the server's own fault (they become 500).
 */
export function mapDatabaseError(err: unknown): AppError | undefined {
  if (!(err instanceof BaseError) && !pgCode(err)) return undefined;
  if (pgCode(err) === PgCode.STORE_MOVED) return storeMovingRefusal();
  if (err instanceof UniqueConstraintError || pgCode(err) === PgCode.UNIQUE_VIOLATION) {
    return fail(ErrorCode.CONFLICT, 'A resource with these values already exists');
  }
  if (err instanceof ForeignKeyConstraintError || pgCode(err) === PgCode.FOREIGN_KEY_VIOLATION) {
    return fail(ErrorCode.CONFLICT, 'The request refers to something that does not exist or is still in use');
  }
  if (
    err instanceof ValidationError ||
    pgCode(err) === PgCode.CHECK_VIOLATION ||
    pgCode(err) === PgCode.NOT_NULL_VIOLATION
  ) {
    return fail(ErrorCode.VALIDATION_FAILED, 'The request breaks a rule of the data');
  }
  if (pgCode(err) === PgCode.INVALID_TEXT_REPRESENTATION) {
    return fail(ErrorCode.VALIDATION_FAILED, 'A value has the wrong format');
  }
  if (isConnectionFailure(err)) {
    return fail(ErrorCode.SERVICE_UNAVAILABLE, 'A database is not reachable right now', {
      headers: { 'Retry-After': '5' },
    });
  }
  return undefined;
}
