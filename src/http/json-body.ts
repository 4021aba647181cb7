import type { RequestHandler } from 'express';
import { ErrorCode, fail } from '../lib/errors';

/** Bytes follow the headers: a length above zero, or a chunked body. `Content-Length: 0` is no body. */
function carriesBody(headers: { 'content-length'?: string; 'transfer-encoding'?: string }): boolean {
  if (headers['transfer-encoding'] !== undefined) return true;
  const length = Number(headers['content-length']);
  return Number.isFinite(length) && length > 0;
}

/**
 * The API reads JSON bodies only. express.json leaves any other body unread, and a route would then
 * answer "expected object, received undefined" about a body the client did send: refuse it as what it
 * is (415). Mounted after the body parsers, so a body one of them read (JSON, or the Stripe webhook's
 * raw bytes) passes, and so does a request without a body (a bodyless POST needs no Content-Type).
 */
export const requireJsonBody: RequestHandler = (req, _res, next) => {
  if (req.body !== undefined || !carriesBody(req.headers)) return next();
  next(
    fail(
      ErrorCode.UNSUPPORTED_MEDIA_TYPE,
      'This API reads JSON request bodies only: send the body as JSON with Content-Type: application/json',
    ),
  );
};
