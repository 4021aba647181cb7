import express from 'express';
import request from 'supertest';
import { z } from 'zod';
import { ApiRouter } from '../../src/http/api-router';
import { notFoundHandler, problemHandler } from '../../src/http/problem';
import { requestId } from '../../src/http/request-id';
import { AppError, ErrorCode } from '../../src/lib/errors';
import { expectProblem } from '../helpers/http';

/** A bare app with the problem middleware, to see how each kind of failure is answered. */
function appWith(route: (app: express.Express) => void) {
  const app = express();
  app.use((req, res, next) => {
    requestId(req, res);
    next();
  });
  app.use(express.json({ limit: '100kb' }));
  route(app);
  app.use(notFoundHandler);
  app.use(problemHandler);
  return app;
}

describe('problem JSON', () => {
  test('an AppError keeps its status, code, detail and headers', async () => {
    const app = appWith((a) =>
      a.get('/x', () => {
        throw new AppError(503, ErrorCode.TENANT_UNAVAILABLE, 'The store database is not reachable', {
          headers: { 'Retry-After': '2' },
        });
      }),
    );
    const res = await request(app).get('/x');
    expectProblem(res, 503, 'TENANT_UNAVAILABLE');
    expect(res.body).toMatchObject({ title: 'Service Unavailable', detail: 'The store database is not reachable' });
    expect(res.headers['retry-after']).toBe('2');
  });

  test('an unexpected error becomes 500 INTERNAL without its message or stack', async () => {
    const app = appWith((a) =>
      a.get('/x', async () => {
        throw new Error('secret internals: password=hunter2 at db.internal:5432');
      }),
    );
    const res = await request(app).get('/x');
    expectProblem(res, 500, 'INTERNAL');
    expect(res.text).not.toMatch(/hunter2|internals|db\.internal/);
  });

  test('a path parameter that is not valid percent-encoding is a 400, not a 500', async () => {
    const app = appWith((a) => a.get('/things/:id', (req, res) => void res.json({ id: req.params.id })));
    expectProblem(await request(app).get('/things/%E0%A4%A'), 400, 'VALIDATION_FAILED');
    await request(app).get('/things/%C3%A9').expect(200, { id: 'é' });
  });

  test('validation failures list every problem with its path', async () => {
    const api = new ApiRouter('/v');
    api.post(
      '/',
      {
        operationId: 'testValidation',
        summary: 'test',
        body: z.strictObject({ a: z.string(), b: z.object({ c: z.number() }) }),
      },
      () => ({ ok: true }),
    );
    const app = appWith((a) => a.use(api.basePath, api.router));
    const res = await request(app)
      .post('/v')
      .send({ a: 1, b: { c: 'x' } });
    expectProblem(res, 400, 'VALIDATION_FAILED');
    expect(res.body.errors.map((e: { path: string }) => e.path).sort()).toEqual(['a', 'b.c']);
    await request(app)
      .post('/v')
      .send({ a: 'x', b: { c: 1 } })
      .expect(200, { ok: true });
  });
});
