import type { Express } from 'express';
import request from 'supertest';

type Method = 'get' | 'post' | 'put' | 'patch' | 'delete' | 'options';

/**
 * supertest bound to an app that keeps every response it saw, so a suite can check at the end that no
 * answer ever leaked internals (see expectNoLeaks).
 */
export function recordingClient(app: Express) {
  const responses: request.Response[] = [];
  const call = (method: Method) => (path: string) =>
    request(app)
      [method](path)
      .on('response', (res: request.Response) => responses.push(res));
  return {
    get: call('get'),
    post: call('post'),
    put: call('put'),
    patch: call('patch'),
    delete: call('delete'),
    options: call('options'),
    responses,
  };
}
export type RecordingClient = ReturnType<typeof recordingClient>;

const LEAKS: [string, RegExp][] = [
  ['a password hash field', /password_?hash/i],
  ['a bcrypt hash', /\$2[aby]\$\d\d\$/],
  // A stack frame line, raw or escaped inside a JSON string.
  ['a stack trace', /(\\n|\n)\s+at \S/],
  ['a source path', /node_modules|\/src\/|\.ts:\d+/],
  ['SQL', /\b(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b .*\b(FROM|VALUES|SET|WHERE)\b/],
  ['a database URL', /postgres(ql)?:\/\//],
];

/** Fail when a response body shows a stack trace, SQL, a database URL or a password hash. */
export function expectNoLeak(res: request.Response): void {
  const text = res.text ?? '';
  for (const [what, pattern] of LEAKS) {
    if (pattern.test(text)) throw new Error(`${res.status} response to a request shows ${what}: ${text.slice(0, 500)}`);
  }
}

export function expectNoLeaks(responses: request.Response[]): void {
  expect(responses.length).toBeGreaterThan(0);
  for (const res of responses) expectNoLeak(res);
}

const PROBLEM_MEMBERS: Record<string, string[]> = {
  MIGRATION_RUN_ACTIVE: ['runId'],
  PLAN_LIMIT_REACHED: ['resource', 'limit', 'count'],
  PLAN_LIMIT_EXCEEDED: ['over'],
};

/** Assert an RFC 9457 problem answer with our fields, the right content type and a request id. */
export function expectProblem(res: request.Response, status: number, code: string): void {
  if (res.status !== status || res.body?.code !== code) {
    throw new Error(`expected ${status} ${code}, got ${res.status} ${res.text}`);
  }
  expect(res.headers['content-type']).toMatch(/^application\/problem\+json/);
  expect(res.headers['x-request-id']).toEqual(expect.any(String));
  const { errors, ...all } = res.body as Record<string, unknown>;
  // Members some codes document beside the standard ones (Problem in src/http/openapi.ts), and only those codes.
  const rest = Object.fromEntries(Object.entries(all).filter(([k]) => !(PROBLEM_MEMBERS[code] ?? []).includes(k)));
  expect(rest).toEqual({ type: 'about:blank', title: expect.any(String), status, code, detail: expect.any(String) });
  expect((rest.title as string).length).toBeGreaterThan(0);
  expect((rest.detail as string).length).toBeGreaterThan(0);
  if (errors !== undefined) {
    expect(errors).toEqual(expect.arrayContaining([{ path: expect.any(String), message: expect.any(String) }]));
  }
  expectNoLeak(res);
}

/** A 400 VALIDATION_FAILED whose `errors` name exactly these paths (order ignored). */
export function expectValidationErrors(res: request.Response, paths: string[]): void {
  expectProblem(res, 400, 'VALIDATION_FAILED');
  const got = (res.body.errors as { path: string; message: string }[]).map((e) => e.path);
  expect([...new Set(got)].sort()).toEqual([...paths].sort());
  for (const e of res.body.errors as { message: string }[]) expect(e.message.length).toBeGreaterThan(0);
}
