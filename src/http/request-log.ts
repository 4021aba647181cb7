import type { Request, RequestHandler } from 'express';
import { logger } from '../lib/logger';
import { requestId } from './request-id';

/** One answered request, as the metrics see it: only bounded values (a route pattern, never the raw path). */
export interface AnsweredRequest {
  method: string;
  route: string;
  status: number;
  seconds: number;
}

/** The route label of requests that no route handled (unknown paths, refusals before routing). */
export const UNMATCHED_ROUTE = 'unmatched';

const ROUTE_BASE = Symbol('routeBase');
type Marked = Request & { [ROUTE_BASE]?: string };

/**
 * Put before a router mounted at `base` (`app.use(base, routeBase(base), router)`): the route label of a
 * request is then `base` + the pattern of the route that matched inside the router. Express keeps `req.route`
 * after an error leaves the router, but resets `req.baseUrl`, so the mount is recorded here on the way in.
 * A request that entered the router and matched no route of it (refused by the router's own middleware,
 * e.g. tenant resolution) is labelled `base/*`.
 */
export function routeBase(base: string): RequestHandler {
  return (req, _res, next) => {
    (req as Marked)[ROUTE_BASE] = base;
    next();
  };
}

/** `/api/store/products/:id`, never `/api/store/products/3f2…`: one series per route, whatever the ids. */
export function routeLabel(req: Request): string {
  const base = (req as Marked)[ROUTE_BASE] ?? '';
  const pattern = (req.route as { path?: unknown } | undefined)?.path;
  if (typeof pattern === 'string') return base + pattern;
  if (pattern !== undefined) return `${base}${String(pattern)}`;
  return base ? `${base}/*` : UNMATCHED_ROUTE;
}

/**
 * Gives every request its id (echoed in X-Request-Id), reports each answer to `observe` (the metrics) and logs
 * it — 5xx as warn, 4xx as info, the rest as debug — with one listener and no per-request logger object: this
 * runs on every request, the catalogue's hot path included.
 */
export function requestLog(observe: (answered: AnsweredRequest) => void): RequestHandler {
  return (req, res, next) => {
    const started = performance.now();
    const id = requestId(req, res);
    req.id = id;
    res.once('finish', () => {
      const status = res.statusCode;
      const ms = performance.now() - started;
      observe({ method: req.method, route: routeLabel(req), status, seconds: ms / 1000 });
      const level = status >= 500 ? 'warn' : status >= 400 ? 'info' : 'debug';
      if (logger.isLevelEnabled(level)) {
        logger[level]({ reqId: id, method: req.method, url: req.originalUrl, status, ms: Math.round(ms) }, 'request');
      }
    });
    next();
  };
}
