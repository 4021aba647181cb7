import type { RequestHandler } from 'express';
import { logger } from '../lib/logger';
import { requestId } from './request-id';

/** Answers by status class (2xx, 4xx…), read by the metrics endpoint. */
export type ResponseCounts = Map<string, number>;

/**
 * Gives every request its id (echoed in X-Request-Id), counts the answers and logs each one — 5xx as warn,
 * 4xx as info, the rest as debug — with one listener and no per-request logger object: this runs on every
 * request, the catalogue's hot path included.
 */
export function requestLog(counts: ResponseCounts): RequestHandler {
  return (req, res, next) => {
    const started = performance.now();
    const id = requestId(req, res);
    req.id = id;
    res.once('finish', () => {
      const status = res.statusCode;
      const cls = `${Math.floor(status / 100)}xx`;
      counts.set(cls, (counts.get(cls) ?? 0) + 1);
      const level = status >= 500 ? 'warn' : status >= 400 ? 'info' : 'debug';
      if (logger.isLevelEnabled(level)) {
        logger[level]({ reqId: id, method: req.method, url: req.originalUrl, status, ms: Math.round(performance.now() - started) }, 'request');
      }
    });
    next();
  };
}
