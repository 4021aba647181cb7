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
  STORE_NOT_FOUND: 'STORE_NOT_FOUND',
  STORE_NOT_READY: 'STORE_NOT_READY',
  STORE_SUSPENDED: 'STORE_SUSPENDED',
  TENANT_MISMATCH: 'TENANT_MISMATCH',
  TENANT_UNAVAILABLE: 'TENANT_UNAVAILABLE',
  ALREADY_PROVISIONED: 'ALREADY_PROVISIONED',
  DATABASE_UNREACHABLE: 'DATABASE_UNREACHABLE',
  DATABASE_AUTH_FAILED: 'DATABASE_AUTH_FAILED',
  DATABASE_NOT_EMPTY: 'DATABASE_NOT_EMPTY',
  STEP_NOT_SKIPPABLE: 'STEP_NOT_SKIPPABLE',
  INSUFFICIENT_CREDITS: 'INSUFFICIENT_CREDITS',
  OUT_OF_STOCK: 'OUT_OF_STOCK',
  SKU_TAKEN: 'SKU_TAKEN',
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
    readonly extra: { errors?: FieldError[]; headers?: Record<string, string> } = {},
  ) {
    super(detail);
    this.name = 'AppError';
  }

  get title(): string {
    return TITLES[this.status] ?? 'Error';
  }
}

export const unauthenticated = (detail = 'Authentication required') => new AppError(401, ErrorCode.UNAUTHENTICATED, detail);
export const forbidden = (detail = 'Not allowed', code: ErrorCode = ErrorCode.FORBIDDEN) => new AppError(403, code, detail);
export const notFound = (detail = 'Not found', code: ErrorCode = ErrorCode.NOT_FOUND) => new AppError(404, code, detail);
export const conflict = (code: ErrorCode, detail: string) => new AppError(409, code, detail);
export const unavailable = (code: ErrorCode, detail: string, retryAfterSeconds: number) =>
  new AppError(503, code, detail, { headers: { 'Retry-After': String(retryAfterSeconds) } });
