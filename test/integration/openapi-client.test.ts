import { once } from 'node:events';
import { createTenantryClient, type Problem, type TenantryClient } from '../../clients/typescript';
import { uniqueEmail } from '../helpers/app';
import { uniqueSlug } from '../helpers/stores';
import { eventually } from '../helpers/fixtures';
import { useSuite } from '../helpers/suite';

/**
 * The typed client generated from the OpenAPI document (clients/typescript), used the way the React admin
 * frontend will: over HTTP, against a server on a real port, every path, body and answer typed.
 */
const t = useSuite('openapi-client', { WORKER: 'on' });
let baseUrl: string;
beforeAll(async () => {
  const server = t.listen();
  if (!server.listening) await once(server, 'listening');
  const address = server.address();
  if (!address || typeof address === 'string') throw new Error('the server has no TCP address');
  baseUrl = `http://127.0.0.1:${address.port}`;
});

/** The client's error of a failed call, typed as the problem JSON every error is. */
const problemOf = (error: unknown): Problem => error as Problem;

test('the onboarding path through the typed client: account, store, managed database, wizard, catalogue by X-Store-Id', async () => {
  let token: string | undefined;
  const api: TenantryClient = createTenantryClient(baseUrl, { token: () => token });

  const registered = await api.POST('/api/auth/register', {
    body: { email: uniqueEmail('client'), password: 'correct-horse-1', name: 'Client User' },
  });
  expect(registered.response.status).toBe(201);
  token = registered.data!.token;
  expect(registered.data!.user.role).toBe('user');

  const slug = uniqueSlug('client');
  const created = await api.POST('/api/stores', { body: { name: 'Client Shop', slug } });
  expect(created.response.status).toBe(201);
  const storeId = created.data!.id;
  expect(created.data).toMatchObject({ slug, status: 'pending_database', role: 'owner' });

  // An error comes back as the problem JSON, with its stable code.
  const taken = await api.POST('/api/stores', { body: { name: 'Again', slug } });
  expect(taken.response.status).toBe(409);
  expect(problemOf(taken.error).code).toBe('SLUG_TAKEN');

  const connected = await api.POST('/api/stores/{id}/database', {
    params: { path: { id: storeId } },
    body: { mode: 'managed' },
  });
  expect(connected.response.status).toBe(202);
  expect(connected.data!.status).toBe('queued');

  const provisioned = await eventually(async () => {
    const { data } = await api.GET('/api/stores/{id}/provisioning', { params: { path: { id: storeId } } });
    if (data?.state !== 'completed') throw new Error(`provisioning: ${JSON.stringify(data)}`);
    return data;
  }, 30_000);
  expect(provisioned.progress).toBe(100);

  const wizard = await api.GET('/api/onboarding');
  expect(wizard.data!.storeId).toBe(storeId);
  expect(wizard.data!.steps.find((s) => s.id === 'database')).toMatchObject({ done: true });

  const skipped = await api.POST('/api/onboarding/steps/{id}/skip', { params: { path: { id: 'payments' } } });
  expect(skipped.response.status).toBe(200);
  expect(skipped.data!.steps.find((s) => s.id === 'payments')).toMatchObject({ skipped: true });

  // The owner's platform token adds a product to the store named by X-Store-Id …
  const product = await api.POST('/api/store/products', {
    params: { header: { 'X-Store-Id': storeId } },
    body: { sku: 'MUG-1', name: 'Mug', priceCents: 1250, currency: 'EUR', stock: 3 },
  });
  expect(product.response.status).toBe(201);

  // … and a shopper, without a token, lists the catalogue the same way.
  const shopper = createTenantryClient(baseUrl);
  const catalogue = await shopper.GET('/api/store/products', {
    params: { header: { 'X-Store-Id': storeId }, query: { limit: 10 } },
  });
  expect(catalogue.response.status).toBe(200);
  expect(catalogue.data).toEqual({
    items: [expect.objectContaining({ id: product.data!.id, sku: 'MUG-1', priceCents: 1250, active: true })],
    nextCursor: null,
  });

  // What the types do not let the client send, the API refuses: a query parameter the route does not know.
  const unknown = await fetch(`${baseUrl}/api/store/products?sort=price`, { headers: { 'X-Store-Id': storeId } });
  expect(unknown.status).toBe(400);
  expect(await unknown.json()).toMatchObject({
    code: 'VALIDATION_FAILED',
    errors: [{ path: 'sort', message: '"sort" is not a query parameter of this route' }],
  });
});
