import type { ErrorRequestHandler, RequestHandler, Response } from 'express';
import { mapDatabaseError } from '../db/errors';
import { AppError, ErrorCode, fail } from '../lib/errors';
import { logger } from '../lib/logger';

export function sendProblem(res: Response, err: AppError): void {
  for (const [name, value] of Object.entries(err.extra.headers ?? {})) res.setHeader(name, value);
  res
    .status(err.status)
    .type('application/problem+json')
    .send(
      JSON.stringify({
        type: 'about:blank',
        title: err.title,
        status: err.status,
        code: err.code,
        detail: err.message,
        ...(err.extra.errors ? { errors: err.extra.errors } : {}),
        ...err.extra.members,
      }),
    );
}

/** Body-parser failures arrive as errors with a `type`; they are the client's fault. */
function fromBodyParser(err: { type?: string; status?: number }): AppError | undefined {
  switch (err.type) {
    case 'entity.parse.failed':
      return fail(ErrorCode.MALFORMED_JSON, 'The request body is not valid JSON');
    case 'entity.too.large':
      return fail(ErrorCode.PAYLOAD_TOO_LARGE, 'The request body is larger than 100 kB');
    case 'encoding.unsupported':
    case 'charset.unsupported':
    case 'request.aborted':
    case 'request.size.invalid':
      return fail(ErrorCode.VALIDATION_FAILED, 'The request body could not be read');
    default:
      return undefined;
  }
}

/** Express's own refusal of a path parameter that is not valid percent-encoding (a URIError, status 400). */
function fromRouter(err: { status?: number }): AppError | undefined {
  if (err instanceof URIError && err.status === 400)
    return fail(ErrorCode.VALIDATION_FAILED, 'The request path is not valid URL encoding');
  return undefined;
}

export const notFoundHandler: RequestHandler = (req, _res, next) => {
  next(fail(ErrorCode.NOT_FOUND, `No route for ${req.method} ${req.path}`));
};

/** The one middleware that turns every error into RFC 9457 problem JSON. */
export const problemHandler: ErrorRequestHandler = (err, req, res, next) => {
  if (res.headersSent) return next(err);
  const known = err instanceof AppError ? err : (fromBodyParser(err) ?? fromRouter(err) ?? mapDatabaseError(err));
  // Expected failures (including 503s of an unreachable tenant, logged where they are detected) are
  // answered without a stack trace in the log; only unknown errors are logged as errors.
  if (known) return sendProblem(res, known);
  logger.error({ err, reqId: req.id }, 'unhandled error');
  sendProblem(
    res,
    fail(ErrorCode.INTERNAL, 'Something went wrong on our side; the request id identifies it in our logs'),
  );
};
