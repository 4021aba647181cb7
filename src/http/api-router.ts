import { Router, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { z, type ZodObject, type ZodType } from 'zod';
import { ErrorCode, fail, type FieldError } from '../lib/errors';
import { Problem, registry } from './openapi';

type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';
type Infer<T> = T extends ZodType ? z.infer<T> : undefined;

export interface RouteSpec<
  B extends ZodType | undefined,
  P extends ZodType | undefined,
  Q extends ZodType | undefined,
> {
  /**
   * The operation's name in the OpenAPI document, which generated clients name their methods after: stable
   * (renaming it breaks every client), camelCase, unique across the API.
   */
  operationId: string;
  summary: string;
  /** More than the summary says (Markdown), in the document. */
  description?: string;
  tags?: string[];
  /**
   * Whether the route needs a bearer token (`true`), reads one when it is sent (`'optional'`) or is public.
   * Documentation: the middleware enforces it.
   */
  secured?: boolean | 'optional';
  middleware?: RequestHandler[];
  /**
   * Middleware run once the input is valid, with `req.body` replaced by the parsed body: for what must see
   * normalised fields (a limiter keyed by the e-mail). Invalid input is refused before it runs.
   */
  afterValidation?: RequestHandler[];
  body?: B;
  params?: P;
  /** Strict (z.strictObject): a parameter the route does not know is refused. Without it, any is. */
  query?: Q;
  /** Request headers the route reads (documentation: the middleware or the handler reads and checks them). */
  headers?: ZodObject;
  /** A body the handler reads itself, unparsed (the Stripe webhook's signed bytes): documented, not validated. */
  rawBody?: { contentType: string; schema: ZodType; description: string };
  /** Status of the success answer (default 200); 204 sends no body. */
  status?: number;
  response?: ZodType;
  /**
   * A success body the handler streams itself instead of JSON (a download): its media type and schema, for the
   * document. The handler writes the response; refusals before the first byte are still thrown (problem JSON).
   */
  download?: { contentType: string; schema: ZodType; description: string; headers?: ZodObject };
  /** Error answers this route documents, by status: `CODE (when) | CODE`. */
  errors?: Record<number, string>;
  /** Answers other than the success and problems (the 503 of /ready, which carries its checks). */
  otherResponses?: Record<number, { description: string; schema: ZodType }>;
}

/** What every route of one router has in common, for the document (e.g. the tenant resolution of /api/store). */
export interface RouterDocs {
  /** Added to the description of each of its routes. */
  description?: string;
  /** Request headers each of its routes reads. */
  headers?: ZodObject;
  /** Error answers each of its routes may give. */
  errors?: Record<number, string>;
  /** Error answers each of its routes that need a token may give (WRONG_TOKEN_TYPE for a platform router). */
  securedErrors?: Record<number, string>;
}

export interface RouteInput<B, P, Q> {
  body: B;
  params: P;
  query: Q;
  req: Request;
  res: Response;
}

const UNKNOWN = {
  query: (name: string) => `"${name}" is not a query parameter of this route`,
  other: (name: string) => `"${name}" is not a field of this request`,
};

/** Every problem by its path; an unknown field or parameter is named by its own path, like any other. */
export function fieldErrors(error: z.ZodError, unknown = UNKNOWN.other): FieldError[] {
  const at = (path: PropertyKey[]) => path.map(String).join('.') || '(root)';
  return error.issues.flatMap((i) =>
    i.code === 'unrecognized_keys'
      ? i.keys.map((key) => ({ path: at([...i.path, key]), message: unknown(key) }))
      : [{ path: at(i.path), message: i.message }],
  );
}

/** Parse with a zod schema or fail with 400 VALIDATION_FAILED listing every problem. */
export function parse<T extends ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(value);
  if (!result.success) {
    const errors = fieldErrors(result.error, what === 'query' ? UNKNOWN.query : UNKNOWN.other);
    throw fail(ErrorCode.VALIDATION_FAILED, `The request ${what} is not valid`, { errors });
  }
  return result.data;
}

/** A route without a query schema takes no query parameter: a misspelt `?limt=5` is an error, not ignored. */
function refuseQuery(query: Record<string, unknown>): void {
  const names = Object.keys(query);
  if (names.length === 0) return;
  throw fail(ErrorCode.VALIDATION_FAILED, 'The request query is not valid: this route takes no query parameters', {
    errors: names.map((name) => ({ path: name, message: UNKNOWN.query(name) })),
  });
}

const toOpenApiPath = (path: string) => path.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

/**
 * Error descriptions merged by code: `VALIDATION_FAILED` and `VALIDATION_FAILED (also: unknown service)` are
 * one entry (the longer one), other codes are listed side by side.
 */
export function mergeErrors(...sources: (Record<number, string> | undefined)[]): Record<number, string> {
  const merged = new Map<number, Map<string, string>>();
  for (const source of sources) {
    for (const [status, description] of Object.entries(source ?? {})) {
      const parts = merged.get(Number(status)) ?? new Map<string, string>();
      for (const part of description.split(' | ')) {
        const key = /^[A-Z][A-Z0-9_]+\b/.exec(part)?.[0] ?? part;
        const known = parts.get(key);
        if (!known || part.length > known.length) parts.set(key, part);
      }
      merged.set(Number(status), parts);
    }
  }
  return Object.fromEntries(
    [...merged].sort(([a], [b]) => a - b).map(([status, parts]) => [status, [...parts.values()].join(' | ')]),
  );
}

/** What a store token sent to a platform route (requireAuth(ctx, 'platform')) gets. */
export const WRONG_TOKEN = `${ErrorCode.WRONG_TOKEN_TYPE} (a store token: this route needs a platform token)`;

/** What a platform token of someone who is not a platform admin gets from an admin route. */
export const NOT_PLATFORM_ADMIN = `${ErrorCode.FORBIDDEN} (not a platform admin)`;

/**
 * A router of platform-admin routes under /api/admin, and the spec parts they all share (`adminOnly`: the
 * admin guard, requirePlatformAdmin).
 */
export function platformAdminRouter(adminOnly: RequestHandler[]) {
  const api = new ApiRouter('/api/admin', { securedErrors: { 403: WRONG_TOKEN } });
  const common = {
    tags: ['platform admin'],
    secured: true,
    middleware: adminOnly,
    errors: { 403: NOT_PLATFORM_ADMIN } as Record<number, string>,
  };
  return { api, common };
}

/** Answers of the HTTP layer that every route with a JSON body can give, before the route runs. */
const BODY_ERRORS = {
  400: `${ErrorCode.VALIDATION_FAILED} | ${ErrorCode.MALFORMED_JSON}`,
  413: `${ErrorCode.PAYLOAD_TOO_LARGE} (a body over 100 kB)`,
  415: `${ErrorCode.UNSUPPORTED_MEDIA_TYPE} (a body that is not sent as application/json)`,
};

/**
 * An Express router whose routes validate their input with zod, hand a typed object to the handler and
 * register themselves in the OpenAPI document.
 */
export class ApiRouter {
  readonly router = Router();
  /** Every route, by method and path inside the router (for the 405 answer of an unsupported method). */
  readonly routes: { method: Method; path: string }[] = [];

  constructor(
    readonly basePath: string,
    private readonly docs: RouterDocs = {},
  ) {}

  get = this.method('get');
  post = this.method('post');
  put = this.method('put');
  patch = this.method('patch');
  delete = this.method('delete');

  private method(method: Method) {
    return <
      B extends ZodType | undefined = undefined,
      P extends ZodType | undefined = undefined,
      Q extends ZodType | undefined = undefined,
    >(
      path: string,
      spec: RouteSpec<B, P, Q>,
      handler: (input: RouteInput<Infer<B>, Infer<P>, Infer<Q>>) => Promise<unknown> | unknown,
    ) => {
      this.document(method, path, spec);
      this.routes.push({ method, path });
      const status = spec.status ?? 200;
      const parsed = new WeakMap<Request, RouteInput<Infer<B>, Infer<P>, Infer<Q>>>();
      const validate = (req: Request, res: Response, next: NextFunction) => {
        if (!spec.query) refuseQuery(req.query);
        const input = {
          body: (spec.body ? parse(spec.body, req.body, 'body') : undefined) as Infer<B>,
          params: (spec.params ? parse(spec.params, req.params, 'path') : undefined) as Infer<P>,
          query: (spec.query ? parse(spec.query, req.query, 'query') : undefined) as Infer<Q>,
          req,
          res,
        };
        if (spec.body) req.body = input.body;
        parsed.set(req, input);
        next();
      };
      const run = async (req: Request, res: Response, _next: NextFunction) => {
        const result = await handler(parsed.get(req)!);
        if (res.headersSent) return;
        if (status === 204 || result === undefined) res.status(status).end();
        else res.status(status).json(result);
      };
      // Authentication (in `middleware`) before validation: a caller who may not use the route learns that
      // (401/403), not what its body should have been.
      this.router[method](path, ...(spec.middleware ?? []), validate, ...(spec.afterValidation ?? []), run);
    };
  }

  private document(
    method: Method,
    path: string,
    spec: RouteSpec<ZodType | undefined, ZodType | undefined, ZodType | undefined>,
  ) {
    const problem = { content: { 'application/problem+json': { schema: Problem } } };
    const status = spec.status ?? 200;
    const errors = mergeErrors(
      // Any route refuses an unknown query parameter.
      { 400: ErrorCode.VALIDATION_FAILED },
      spec.body ? BODY_ERRORS : undefined,
      spec.rawBody ? { 413: BODY_ERRORS[413] } : undefined,
      spec.secured === true
        ? { 401: `${ErrorCode.UNAUTHENTICATED} (missing, invalid, expired or revoked token)` }
        : undefined,
      spec.secured === 'optional'
        ? { 401: `${ErrorCode.UNAUTHENTICATED} (a token was sent and is invalid, expired or revoked)` }
        : undefined,
      this.docs.errors,
      spec.secured === true ? this.docs.securedErrors : undefined,
      spec.errors,
    );
    const headers =
      this.docs.headers || spec.headers ? z.object({ ...this.docs.headers?.shape, ...spec.headers?.shape }) : undefined;
    const description = [spec.description, this.docs.description].filter(Boolean).join('\n\n');
    registry.registerPath({
      method,
      path: toOpenApiPath(this.basePath + path),
      operationId: spec.operationId,
      summary: spec.summary,
      ...(description ? { description } : {}),
      tags: spec.tags,
      // The document's default is the bearer token: a public route says it needs nothing, an optional one
      // that it takes either.
      security: spec.secured === true ? [{ bearer: [] }] : spec.secured === 'optional' ? [{}, { bearer: [] }] : [],
      request: {
        body: spec.body
          ? { required: true, content: { 'application/json': { schema: spec.body } } }
          : spec.rawBody
            ? {
                required: true,
                description: spec.rawBody.description,
                content: { [spec.rawBody.contentType]: { schema: spec.rawBody.schema } },
              }
            : undefined,
        params: spec.params as never,
        query: spec.query as never,
        headers: headers as never,
      },
      responses: {
        [status]: spec.download
          ? {
              description: spec.download.description,
              content: { [spec.download.contentType]: { schema: spec.download.schema } },
              ...(spec.download.headers ? { headers: spec.download.headers } : {}),
            }
          : {
              description: status === 204 ? 'No content' : 'Success',
              ...(spec.response ? { content: { 'application/json': { schema: spec.response } } } : {}),
            },
        ...Object.fromEntries(Object.entries(errors).map(([code, description]) => [code, { description, ...problem }])),
        ...Object.fromEntries(
          Object.entries(spec.otherResponses ?? {}).map(([code, { description, schema }]) => [
            code,
            { description, content: { 'application/json': { schema } } },
          ]),
        ),
      },
    });
  }
}

/** `/api/stores/:id` → the source of a pattern of the paths Express matches with it (any segment for a parameter). */
const pathSource = (path: string) =>
  path
    .split(/(:[A-Za-z0-9_]+)/)
    .map((part) => (part.startsWith(':') ? '[^/]+' : part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')))
    .join('');

/** One pattern for several paths: case-insensitive with an optional trailing slash, as Express matches. */
const anyOf = (paths: string[]) => new RegExp(`^(?:${paths.map(pathSource).join('|')})/?$`, 'i');

/**
 * 405 METHOD_NOT_ALLOWED, with the `Allow` header, for a request whose path is one of the routers' routes but
 * whose method none of them answers. Mounted before the routers, so a method that cannot succeed is told as
 * such before the store is resolved or the body read; other paths pass (404 later, or routes not built with
 * ApiRouter). Every request goes through it: two pattern tests, the route-by-route look-up only for a 405.
 */
export function methodNotAllowed(routers: ApiRouter[]): RequestHandler {
  const routes = routers.flatMap((r) =>
    r.routes.map((route) => ({ method: route.method.toUpperCase(), path: r.basePath + route.path })),
  );
  const known = anyOf(routes.map((r) => r.path));
  const byMethod = new Map<string, RegExp>();
  for (const method of new Set(routes.map((r) => r.method)))
    byMethod.set(method, anyOf(routes.filter((r) => r.method === method).map((r) => r.path)));
  const answers = (method: string, path: string) => byMethod.get(method)?.test(path) === true;

  return (req, _res, next) => {
    if (!known.test(req.path) || answers(req.method, req.path) || (req.method === 'HEAD' && answers('GET', req.path)))
      return next();
    const allowed = [...byMethod.keys()].filter((method) => answers(method, req.path));
    if (allowed.includes('GET')) allowed.push('HEAD');
    const allow = allowed.sort().join(', ');
    next(
      fail(ErrorCode.METHOD_NOT_ALLOWED, `${req.method} is not a method of ${req.path}; it answers ${allow}`, {
        headers: { Allow: allow },
      }),
    );
  };
}
