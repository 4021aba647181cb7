import { Router, type NextFunction, type Request, type RequestHandler, type Response } from 'express';
import { z, type ZodType } from 'zod';
import { AppError, ErrorCode, type FieldError } from '../lib/errors';
import { Problem, registry } from './openapi';

type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';
type Infer<T> = T extends ZodType ? z.infer<T> : undefined;

export interface RouteSpec<B extends ZodType | undefined, P extends ZodType | undefined, Q extends ZodType | undefined> {
  summary: string;
  tags?: string[];
  /** Whether the route needs a bearer token (documentation; the middleware enforces it). */
  secured?: boolean;
  middleware?: RequestHandler[];
  /**
   * Middleware run once the input is valid, with `req.body` replaced by the parsed body: for what must see
   * normalised fields (a limiter keyed by the e-mail). Invalid input is refused before it runs.
   */
  afterValidation?: RequestHandler[];
  body?: B;
  params?: P;
  query?: Q;
  /** Status of the success answer (default 200); 204 sends no body. */
  status?: number;
  response?: ZodType;
  /** Error answers this route documents, by status. */
  errors?: Record<number, string>;
}

export interface RouteInput<B, P, Q> {
  body: B;
  params: P;
  query: Q;
  req: Request;
  res: Response;
}

export function fieldErrors(error: z.ZodError): FieldError[] {
  return error.issues.map((i) => ({ path: i.path.join('.') || '(root)', message: i.message }));
}

/** Parse with a zod schema or fail with 400 VALIDATION_FAILED listing every problem. */
export function parse<T extends ZodType>(schema: T, value: unknown, what: string): z.infer<T> {
  const result = schema.safeParse(value);
  if (!result.success) {
    throw new AppError(400, ErrorCode.VALIDATION_FAILED, `The request ${what} is not valid`, { errors: fieldErrors(result.error) });
  }
  return result.data;
}

const toOpenApiPath = (path: string) => path.replace(/:([A-Za-z0-9_]+)/g, '{$1}');

/**
 * An Express router whose routes validate their input with zod, hand a typed object to the handler and
 * register themselves in the OpenAPI document.
 */
export class ApiRouter {
  readonly router = Router();

  constructor(readonly basePath: string) {}

  get = this.method('get');
  post = this.method('post');
  put = this.method('put');
  patch = this.method('patch');
  delete = this.method('delete');

  private method(method: Method) {
    return <B extends ZodType | undefined = undefined, P extends ZodType | undefined = undefined, Q extends ZodType | undefined = undefined>(
      path: string,
      spec: RouteSpec<B, P, Q>,
      handler: (input: RouteInput<Infer<B>, Infer<P>, Infer<Q>>) => Promise<unknown> | unknown,
    ) => {
      this.document(method, path, spec);
      const status = spec.status ?? 200;
      const parsed = new WeakMap<Request, RouteInput<Infer<B>, Infer<P>, Infer<Q>>>();
      const validate = (req: Request, res: Response, next: NextFunction) => {
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
      this.router[method](path, ...(spec.middleware ?? []), validate, ...(spec.afterValidation ?? []), run);
    };
  }

  private document(method: Method, path: string, spec: RouteSpec<ZodType | undefined, ZodType | undefined, ZodType | undefined>) {
    const problem = { content: { 'application/problem+json': { schema: Problem } } };
    const errors: Record<number, string> = { ...spec.errors };
    if (spec.body || spec.query || spec.params) errors[400] ??= 'VALIDATION_FAILED';
    if (spec.secured) errors[401] = 'Missing, invalid, expired or revoked token';
    const status = spec.status ?? 200;
    registry.registerPath({
      method,
      path: toOpenApiPath(this.basePath + path),
      summary: spec.summary,
      tags: spec.tags,
      security: spec.secured ? [{ bearer: [] }] : undefined,
      request: {
        body: spec.body ? { content: { 'application/json': { schema: spec.body } } } : undefined,
        params: spec.params as never,
        query: spec.query as never,
      },
      responses: {
        [status]: {
          description: status === 204 ? 'No content' : 'Success',
          ...(spec.response ? { content: { 'application/json': { schema: spec.response } } } : {}),
        },
        ...Object.fromEntries(Object.entries(errors).map(([code, description]) => [code, { description, ...problem }])),
      },
    });
  }
}
