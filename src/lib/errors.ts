/** Stable machine-readable error codes: clients switch on these, so they never change meaning. */
export const ErrorCode = {
  VALIDATION_FAILED: 'VALIDATION_FAILED',
  MALFORMED_JSON: 'MALFORMED_JSON',
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  NOT_FOUND: 'NOT_FOUND',
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  FORBIDDEN: 'FORBIDDEN',
  WRONG_TOKEN_TYPE: 'WRONG_TOKEN_TYPE',
  RATE_LIMITED: 'RATE_LIMITED',
  CONFLICT: 'CONFLICT',
  EMAIL_TAKEN: 'EMAIL_TAKEN',
  INVALID_CREDENTIALS: 'INVALID_CREDENTIALS',
  SLUG_TAKEN: 'SLUG_TAKEN',
  HOSTNAME_TAKEN: 'HOSTNAME_TAKEN',
  HOSTNAME_NOT_ALLOWED: 'HOSTNAME_NOT_ALLOWED',
  HOSTNAME_NOT_VERIFIED: 'HOSTNAME_NOT_VERIFIED',
  PLAN_LIMIT_REACHED: 'PLAN_LIMIT_REACHED',
  PLAN_LIMIT_EXCEEDED: 'PLAN_LIMIT_EXCEEDED',
  STORE_NOT_FOUND: 'STORE_NOT_FOUND',
  STORE_NOT_READY: 'STORE_NOT_READY',
  STORE_SUSPENDED: 'STORE_SUSPENDED',
  TENANT_MISMATCH: 'TENANT_MISMATCH',
  TENANT_UNAVAILABLE: 'TENANT_UNAVAILABLE',
  /** The store's database is being migrated (or must be before the running code may serve it): Retry-After. */
  TENANT_MIGRATING: 'TENANT_MIGRATING',
  ALREADY_PROVISIONED: 'ALREADY_PROVISIONED',
  DATABASE_UNREACHABLE: 'DATABASE_UNREACHABLE',
  DATABASE_AUTH_FAILED: 'DATABASE_AUTH_FAILED',
  DATABASE_NOT_EMPTY: 'DATABASE_NOT_EMPTY',
  STEP_NOT_SKIPPABLE: 'STEP_NOT_SKIPPABLE',
  INSUFFICIENT_CREDITS: 'INSUFFICIENT_CREDITS',
  OUT_OF_STOCK: 'OUT_OF_STOCK',
  SKU_TAKEN: 'SKU_TAKEN',
  MIGRATION_RUN_ACTIVE: 'MIGRATION_RUN_ACTIVE',
  SERVICE_UNAVAILABLE: 'SERVICE_UNAVAILABLE',
  INTERNAL: 'INTERNAL',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

export interface FieldError {
  path: string;
  message: string;
}

const TITLES: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  402: 'Payment Required',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  409: 'Conflict',
  413: 'Content Too Large',
  415: 'Unsupported Media Type',
  422: 'Unprocessable Content',
  423: 'Locked',
  429: 'Too Many Requests',
  500: 'Internal Server Error',
  503: 'Service Unavailable',
};

/** The one error type of the API: an HTTP status, a stable code and a human detail. */
export class AppError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    detail: string,
    readonly extra: { errors?: FieldError[]; headers?: Record<string, string>; members?: Record<string, unknown> } = {},
  ) {
    super(detail);
    this.name = 'AppError';
  }

  get title(): string {
    return TITLES[this.status] ?? 'Error';
  }
}

/** Each code's one HTTP status: a code never answers with two statuses, so clients may switch on either. */
export const STATUS_OF = {
  VALIDATION_FAILED: 400,
  MALFORMED_JSON: 400,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  UNAUTHENTICATED: 401,
  FORBIDDEN: 403,
  WRONG_TOKEN_TYPE: 403,
  RATE_LIMITED: 429,
  CONFLICT: 409,
  EMAIL_TAKEN: 409,
  INVALID_CREDENTIALS: 401,
  SLUG_TAKEN: 409,
  HOSTNAME_TAKEN: 409,
  HOSTNAME_NOT_ALLOWED: 400,
  HOSTNAME_NOT_VERIFIED: 409,
  PLAN_LIMIT_REACHED: 403,
  PLAN_LIMIT_EXCEEDED: 409,
  STORE_NOT_FOUND: 404,
  STORE_NOT_READY: 409,
  STORE_SUSPENDED: 423,
  TENANT_MISMATCH: 403,
  TENANT_UNAVAILABLE: 503,
  TENANT_MIGRATING: 503,
  ALREADY_PROVISIONED: 409,
  DATABASE_UNREACHABLE: 422,
  DATABASE_AUTH_FAILED: 422,
  DATABASE_NOT_EMPTY: 422,
  STEP_NOT_SKIPPABLE: 400,
  INSUFFICIENT_CREDITS: 402,
  OUT_OF_STOCK: 409,
  SKU_TAKEN: 409,
  MIGRATION_RUN_ACTIVE: 409,
  SERVICE_UNAVAILABLE: 503,
  INTERNAL: 500,
} as const satisfies Record<ErrorCode, number>;

export interface FailExtra {
  errors?: FieldError[];
  headers?: Record<string, string>;
  /** Sent as Retry-After: when the client may usefully ask again. */
  retryAfterSeconds?: number;
  /**
   * Members of the problem beside `code` that its code documents (MIGRATION_RUN_ACTIVE's `runId`,
   * PLAN_LIMIT_REACHED's `limit` and `count`).
   */
  members?: Record<string, unknown>;
}

/** The API error for a code, with the status the table gives that code. */
export function fail(code: ErrorCode, detail: string, extra: FailExtra = {}): AppError {
  const { retryAfterSeconds, ...rest } = extra;
  if (retryAfterSeconds !== undefined) rest.headers = { ...rest.headers, 'Retry-After': String(retryAfterSeconds) };
  return new AppError(STATUS_OF[code], code, detail, rest);
}

export const unauthenticated = (detail = 'Authentication required') => fail(ErrorCode.UNAUTHENTICATED, detail);
/** A store that does not exist, or is deleted, or is not the caller's to know of: all read the same. */
export const noSuchStore = () => fail(ErrorCode.STORE_NOT_FOUND, 'No such store');
