import request from 'supertest';
import { secretContext } from '../../src/lib/crypto';
import { registerUser } from '../helpers/app';
import { expectProblem } from '../helpers/http';
import { useSuite } from '../helpers/suite';
import { freePort, startStallingPgProxy, type StallingPgProxy } from '../helpers/tcp-proxy';
import { createActiveStore, type TestStore } from '../helpers/tenants';

/**
 * A server too busy to start new sessions in time for one store while it answers the others (an overloaded
 * machine): that store's connect timeouts are overload, not its database failing. Both stores reach the same
 * server through a proxy that holds the new sessions of one store's database unanswered.
 */
const t = useSuite('overload', { TENANT_FENCE_MS: '60000' });
const SLOW = 'slow.overload.test';
const FINE = 'fine.overload.test';
let owner: Awaited<ReturnType<typeof registerUser>>;
let slow: TestStore;
let proxy: StallingPgProxy;

beforeAll(async () => {
  owner = await registerUser(t.app);
  const stores = await Promise.all(
    [SLOW, FINE].map((host) => createActiveStore(t, { ownerId: owner.user.id, hostnames: [host] })),
  );
  slow = stores[0];
  const target = { host: slow.connection.host, port: slow.connection.port };
  proxy = await t.open(
    'the stalling Postgres proxy',
    async () => startStallingPgProxy(await freePort(), target),
    (p) => p.close(),
  );
  // Both stores' databases now behind the proxy: one server, as far as Tenantry can tell.
  for (const store of stores) {
    await t.ctx.master.models.StoreDatabase.update(
      {
        credentials: t.ctx.encryptor.encryptJson(
          { ...store.connection, port: proxy.port },
          secretContext.storeCredentials(store.id),
        ),
      },
      { where: { storeId: store.id } },
    );
    await t.ctx.tenants.invalidate(store.id);
  }
});

const get = (host: string) => request(t.app).get('/api/store/products').set('Host', host);

test('a store whose new sessions time out while its server answers the others gets 503 busy with Retry-After and is not fenced', async () => {
  await get(FINE).expect(200);
  proxy.stalled.add(slow.database);

  const [refused, other] = await Promise.all([get(SLOW), get(FINE)]);
  expectProblem(refused, 503, 'TENANT_UNAVAILABLE');
  expect(refused.body.detail).toMatch(/busy/i);
  expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
  expect(other.status).toBe(200);
  expect(t.ctx.tenants.stats().fenced).toEqual([]);

  // The server catches up: the store is served at once, with no fence to sit out.
  proxy.stalled.delete(slow.database);
  await get(SLOW).expect(200);
  expect(t.ctx.tenants.stats().fencesTotal).toBe(0);
});
