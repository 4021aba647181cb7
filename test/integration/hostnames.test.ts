import type { Express } from 'express';
import request from 'supertest';
import type { AppContext } from '../../src/app-context';
import { issueMissingPlatformHostnames } from '../../src/stores/hostnames.service';
import { HOSTNAME_VERIFICATIONS_PER_WINDOW } from '../../src/stores/stores.routes';
import { registerUser } from '../helpers/app';
import { claimHostname, type TestDnsServer } from '../helpers/dns-server';
import { countRows, eventually, startInstance } from '../helpers/fixtures';
import {
  expectNoLeaks,
  expectProblem,
  expectValidationErrors,
  recordingClient,
  type RecordingClient,
} from '../helpers/http';
import { auth, createStoreViaApi, provisionManagedStore } from '../helpers/stores';
import { useSuite } from '../helpers/suite';
import { createActiveStore, type TestStore } from '../helpers/tenants';

/**
 * Hostnames route only once proven: a claim is pending until the DNS TXT record
 * _tenantry-challenge.<hostname> holds its token, asked of a real DNS server on loopback.
 */
let api: RecordingClient;
let dns: TestDnsServer;
let other: { ctx: AppContext; app: Express };
type User = Awaited<ReturnType<typeof registerUser>>;

const STORE_DOMAIN = 'shops.test';
const PLATFORM = 'api.tenantry.test';

const t = useSuite('hostnames', async (s) => {
  dns = await s.dns();
  return {
    WORKER: 'on',
    DNS_SERVERS: dns.address,
    STORE_DOMAIN,
    PLATFORM_HOSTNAMES: `${PLATFORM},admin.tenantry.test`,
  };
});
beforeAll(async () => {
  api = recordingClient(t.app);
  other = await t.instance();
});
t.checkAtEnd(() => expectNoLeaks(api.responses));

const storeInfo = (app: Express, host: string, headers: Record<string, string> = {}) =>
  request(app).get('/api/store/info').set('Host', host).set(headers);
const claim = (user: User, storeId: string, hostname: string) =>
  api.post(`/api/stores/${storeId}/hostnames`).set(auth(user.token)).send({ hostname });
const verify = (user: User, storeId: string, hostname: string) =>
  api.post(`/api/stores/${storeId}/hostnames/${encodeURIComponent(hostname)}/verify`).set(auth(user.token));

describe('claiming a hostname', () => {
  let owner: User;
  let store: TestStore;
  beforeAll(async () => {
    owner = await registerUser(t.app);
    await t.ctx.master.models.Subscription.create({ userId: owner.user.id, planId: 'agency' });
    store = await createActiveStore(t, { ownerId: owner.user.id });
  });

  test("IP literals in every spelling, localhost, single labels, the platform's names and names under STORE_DOMAIN answer 400 HOSTNAME_NOT_ALLOWED and store nothing", async () => {
    const before = await countRows(t, 'store_hostnames');
    const refused = [
      '127.0.0.1',
      '127.0.0.1:3000',
      '10.0.0.7',
      '2130706433',
      '0x7f000001',
      '0177.0.0.1',
      '127.1',
      '1.2.3.0x4',
      '169.254.169.254',
      '::1',
      '[::1]',
      '[::1]:80',
      '[::ffff:127.0.0.1]',
      '::ffff:7f00:1',
      'fe80::1',
      'localhost',
      'LOCALHOST.',
      'shop.localhost',
      'intranet',
      'shop',
      PLATFORM,
      `x.${PLATFORM}`,
      'ADMIN.tenantry.test.',
      STORE_DOMAIN,
      `someone-else.${STORE_DOMAIN}`,
      `${store.slug}.${STORE_DOMAIN}`,
    ];
    for (const hostname of refused) {
      const res = await claim(owner, store.id, hostname);
      if (res.status !== 400 || res.body.code !== 'HOSTNAME_NOT_ALLOWED')
        throw new Error(`${hostname}: ${res.status} ${res.text}`);
      expectProblem(res, 400, 'HOSTNAME_NOT_ALLOWED');
    }
    expect(await countRows(t, 'store_hostnames')).toBe(before);
  });

  test('names with a scheme, a path, an underscore or an empty label answer 400 VALIDATION_FAILED naming the field', async () => {
    const before = await countRows(t, 'store_hostnames');
    for (const hostname of [
      'https://shop.example.test',
      'shop.example.test/path',
      'my_shop.example.test',
      'shop..example.test',
      '.example.test',
      '-shop.example.test',
      '',
      `${'a'.repeat(64)}.test`,
      'a b.test',
    ]) {
      expectValidationErrors(await claim(owner, store.id, hostname), ['hostname']);
    }
    expectValidationErrors(
      await api
        .post(`/api/stores/${store.id}/hostnames`)
        .set(auth(owner.token))
        .send({ hostname: 'x'.repeat(400) }),
      ['hostname'],
    );
    expectProblem(
      await api
        .post(`/api/stores/${store.id}/hostnames`)
        .set(auth(owner.token))
        .send({ hostname: 'ok.example.test', extra: 1 }),
      400,
      'VALIDATION_FAILED',
    );
    expect(await countRows(t, 'store_hostnames')).toBe(before);
  });

  test('a claim is normalised, pending with the TXT record to publish, and routes nothing until verified', async () => {
    const res = await claim(owner, store.id, ' Shop.Claimed.TEST.:443 ').expect(201);
    expect(res.body).toEqual({
      hostname: 'shop.claimed.test',
      kind: 'custom',
      status: 'pending',
      verification: {
        type: 'dns-txt',
        name: '_tenantry-challenge.shop.claimed.test',
        value: expect.stringMatching(/^[0-9a-f]{32}$/),
      },
      verifiedAt: null,
      createdAt: expect.any(String),
    });
    const list = await api.get(`/api/stores/${store.id}/hostnames`).set(auth(owner.token)).expect(200);
    expect(list.body.items).toContainEqual(res.body);
    // Claiming again answers with the same claim (same token).
    expect((await claim(owner, store.id, 'shop.claimed.test').expect(201)).body).toEqual(res.body);

    expectProblem(await storeInfo(t.app, 'shop.claimed.test'), 404, 'STORE_NOT_FOUND');
    // Not proven: no record, then a wrong one; the answer says what was found.
    const missing = await verify(owner, store.id, 'shop.claimed.test');
    expectProblem(missing, 409, 'HOSTNAME_NOT_VERIFIED');
    expect(missing.body.detail).toMatch(/no TXT record/);
    dns.setTxt('_tenantry-challenge.shop.claimed.test', ['not-the-token']);
    const wrong = await verify(owner, store.id, 'shop.claimed.test');
    expectProblem(wrong, 409, 'HOSTNAME_NOT_VERIFIED');
    expect(wrong.body.detail).toContain('"not-the-token"');
    expect(
      (
        await t.ctx.master.models.StoreHostname.findOne({
          where: { hostname: 'shop.claimed.test' },
          rejectOnEmpty: true,
        })
      ).status,
    ).toBe('pending');
    expectProblem(await storeInfo(t.app, 'shop.claimed.test'), 404, 'STORE_NOT_FOUND');

    // Proven (among other TXT values): verified, and it routes on every instance (the other one was asked before).
    expectProblem(await storeInfo(other.app, 'shop.claimed.test'), 404, 'STORE_NOT_FOUND');
    dns.setTxt('_tenantry-challenge.shop.claimed.test', ['v=spf1 -all', res.body.verification.value]);
    const ok = await verify(owner, store.id, 'SHOP.claimed.test').expect(200);
    expect(ok.body).toEqual({ ...res.body, status: 'verified', verification: null, verifiedAt: expect.any(String) });
    expect((await storeInfo(t.app, 'Shop.Claimed.Test').expect(200)).body.id).toBe(store.id);
    expect((await eventually(() => storeInfo(other.app, 'shop.claimed.test').expect(200))).body.id).toBe(store.id);
    // Verifying again is harmless.
    await verify(owner, store.id, 'shop.claimed.test').expect(200);
    expect(dns.asked).toContain('_tenantry-challenge.shop.claimed.test');
  });

  test('verifying or removing a hostname the store does not have answers 404', async () => {
    expectProblem(await verify(owner, store.id, 'never.claimed.test'), 404, 'NOT_FOUND');
    expectProblem(
      await api.delete(`/api/stores/${store.id}/hostnames/never.claimed.test`).set(auth(owner.token)),
      404,
      'NOT_FOUND',
    );
  });

  test('DELETE of a verified hostname answers 204 and the host stops resolving, also on the other instance', async () => {
    const host = 'bye.claimed.test';
    await claimHostname(t.app, owner.token, store.id, host, dns);
    await storeInfo(t.app, host).expect(200);
    await eventually(() => storeInfo(other.app, host).expect(200));
    const res = await api
      .delete(`/api/stores/${store.id}/hostnames/BYE.claimed.test`)
      .set(auth(owner.token))
      .expect(204);
    expect(res.text).toBe('');
    expect(await countRows(t, 'store_hostnames', 'hostname = :host', { host })).toBe(0);
    expectProblem(await storeInfo(t.app, host), 404, 'STORE_NOT_FOUND');
    await eventually(async () => expectProblem(await storeInfo(other.app, host), 404, 'STORE_NOT_FOUND'));
  });

  test('a staff member may list hostnames but not claim, verify or remove them; a stranger gets 403', async () => {
    const staff = await registerUser(t.app);
    await t.ctx.master.models.StoreMember.create({ storeId: store.id, userId: staff.user.id, role: 'staff' });
    const stranger = await registerUser(t.app);
    await api.get(`/api/stores/${store.id}/hostnames`).set(auth(staff.token)).expect(200);
    expectProblem(await claim(staff, store.id, 'staff.claimed.test'), 403, 'FORBIDDEN');
    expectProblem(await verify(staff, store.id, 'shop.claimed.test'), 403, 'FORBIDDEN');
    expectProblem(
      await api.delete(`/api/stores/${store.id}/hostnames/shop.claimed.test`).set(auth(staff.token)),
      403,
      'FORBIDDEN',
    );
    expectProblem(await claim(stranger, store.id, 'stranger.claimed.test'), 403, 'FORBIDDEN');
    expectProblem(await api.get(`/api/stores/${store.id}/hostnames`).set(auth(stranger.token)), 403, 'FORBIDDEN');
    expect(await countRows(t, 'store_hostnames', "hostname IN ('staff.claimed.test', 'stranger.claimed.test')")).toBe(
      0,
    );
  });
});

describe('squatting and taking over', () => {
  test('a pending claim elsewhere blocks nobody: the owner who proves the domain gets it and the squatter loses the claim', async () => {
    const [squatter, victim] = [await registerUser(t.app), await registerUser(t.app)];
    const [s, v] = [
      await createActiveStore(t, { ownerId: squatter.user.id }),
      await createActiveStore(t, { ownerId: victim.user.id }),
    ];
    const host = 'brand.example.test';
    const squat = await claim(squatter, s.id, host).expect(201);
    const real = await claim(victim, v.id, host).expect(201);
    expect(real.body.verification.value).not.toBe(squat.body.verification.value);
    // The squatter cannot prove it (the record holds the victim's token), and the host routes nowhere meanwhile.
    dns.setTxt(`_tenantry-challenge.${host}`, [real.body.verification.value]);
    expectProblem(await verify(squatter, s.id, host), 409, 'HOSTNAME_NOT_VERIFIED');
    expectProblem(await storeInfo(t.app, host), 404, 'STORE_NOT_FOUND');

    await verify(victim, v.id, host).expect(200);
    expect((await storeInfo(t.app, host).expect(200)).body.id).toBe(v.id);
    // Verifying moved the name: the squatter's claim is gone, and a new one is refused.
    expect(await countRows(t, 'store_hostnames', 'hostname = :host AND store_id = :id', { host, id: s.id })).toBe(0);
    expectProblem(await verify(squatter, s.id, host), 404, 'NOT_FOUND');
    expectProblem(await claim(squatter, s.id, host), 409, 'HOSTNAME_TAKEN');
    // Nor can the squatter remove it through its own store.
    expectProblem(
      await api.delete(`/api/stores/${s.id}/hostnames/${host}`).set(auth(squatter.token)),
      404,
      'NOT_FOUND',
    );
    expect(await countRows(t, 'store_hostnames', "hostname = :host AND status = 'verified'", { host })).toBe(1);
  });

  test("a host and an X-Store-Id naming different stores answer 403 TENANT_MISMATCH, never one store's data for the other", async () => {
    const owner = await registerUser(t.app);
    const a = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['a.mismatch.test'] });
    const b = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['b.mismatch.test'] });
    expectProblem(await storeInfo(t.app, 'a.mismatch.test', { 'X-Store-Id': b.id }), 403, 'TENANT_MISMATCH');
    const reg = await request(t.app)
      .post('/api/store/auth/register')
      .set('Host', 'a.mismatch.test')
      .set('X-Store-Id', b.id)
      .send({ email: 'shopper@mismatch.test', password: 'correct-horse-1', name: 'S' });
    expectProblem(reg, 403, 'TENANT_MISMATCH');
    // Agreeing host and header, or either alone, are served.
    expect((await storeInfo(t.app, 'a.mismatch.test', { 'X-Store-Id': a.id }).expect(200)).body.id).toBe(a.id);
    expect((await storeInfo(t.app, 'unknown.mismatch.test', { 'X-Store-Id': b.id }).expect(200)).body.id).toBe(b.id);
  });

  test('a request by IP address or by a platform hostname is never routed by its host, even if such a name were on record', async () => {
    const owner = await registerUser(t.app);
    const hostile = await createActiveStore(t, { ownerId: owner.user.id });
    const victim = await createActiveStore(t, { ownerId: (await registerUser(t.app)).user.id });
    // As a claim made before hostnames were checked would have left them (then verified by hand).
    for (const hostname of ['127.0.0.1', PLATFORM]) {
      await t.ctx.master.models.StoreHostname.create({
        hostname,
        storeId: hostile.id,
        status: 'verified',
        verifiedAt: new Date(),
      });
    }
    for (const host of ['127.0.0.1', '127.0.0.1:3000', PLATFORM, `${PLATFORM}:443`, '[::1]:3000']) {
      expectProblem(await storeInfo(t.app, host), 404, 'STORE_NOT_FOUND');
      expect((await storeInfo(t.app, host, { 'X-Store-Id': victim.id }).expect(200)).body.id).toBe(victim.id);
    }
    const shopper = await request(t.app)
      .post('/api/store/auth/register')
      .set('Host', '127.0.0.1')
      .set('X-Store-Id', victim.id)
      .send({ email: 'shopper@ip.test', password: 'correct-horse-1', name: 'S' })
      .expect(201);
    expect(shopper.body.user.email).toBe('shopper@ip.test');
  });
});

describe('the per-store cap', () => {
  test("claims beyond the plan's hostnames limit answer 403 PLAN_LIMIT_REACHED, also when sent at once", async () => {
    const owner = await registerUser(t.app); // free plan: 2 custom hostnames per store
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const results = await Promise.all(Array.from({ length: 6 }, (_, i) => claim(owner, store.id, `n${i}.cap.test`)));
    expect(results.filter((r) => r.status === 201)).toHaveLength(2);
    for (const r of results.filter((r) => r.status !== 201)) expectProblem(r, 403, 'PLAN_LIMIT_REACHED');
    expect(await countRows(t, 'store_hostnames', 'store_id = :id', { id: store.id })).toBe(2);
    // Removing one makes room again.
    const kept = results.find((r) => r.status === 201)!.body.hostname as string;
    await api.delete(`/api/stores/${store.id}/hostnames/${kept}`).set(auth(owner.token)).expect(204);
    await claim(owner, store.id, 'again.cap.test').expect(201);
  });
});

describe('the platform-issued hostname', () => {
  test('a store whose database becomes active gets <slug>.<STORE_DOMAIN>, verified; it routes and cannot be removed or claimed by another', async () => {
    const owner = await registerUser(t.app);
    const store = await provisionManagedStore(t.app, owner.token);
    const host = `${store.slug}.${STORE_DOMAIN}`;
    const list = await api.get(`/api/stores/${store.id}/hostnames`).set(auth(owner.token)).expect(200);
    expect(list.body.items).toEqual([
      {
        hostname: host,
        kind: 'platform',
        status: 'verified',
        verification: null,
        verifiedAt: expect.any(String),
        createdAt: expect.any(String),
      },
    ]);
    expect((await storeInfo(t.app, host).expect(200)).body.id).toBe(store.id);
    expect((await eventually(() => storeInfo(other.app, host).expect(200))).body.id).toBe(store.id);
    expectProblem(
      await api.delete(`/api/stores/${store.id}/hostnames/${host}`).set(auth(owner.token)),
      400,
      'HOSTNAME_NOT_ALLOWED',
    );

    const rival = await registerUser(t.app);
    const rivalStore = await createStoreViaApi(t.app, rival.token);
    expectProblem(await claim(rival, rivalStore.id, host), 400, 'HOSTNAME_NOT_ALLOWED');
    expect(await countRows(t, 'store_hostnames', 'hostname = :host', { host })).toBe(1);
  });

  test('stores already active without one are issued theirs at start-up', async () => {
    const owner = await registerUser(t.app);
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    const issued = await issueMissingPlatformHostnames(t.ctx);
    expect(issued).toContain(`${store.slug}.${STORE_DOMAIN}`);
    expect((await storeInfo(t.app, `${store.slug}.${STORE_DOMAIN}`).expect(200)).body.id).toBe(store.id);
    expect(await issueMissingPlatformHostnames(t.ctx)).toEqual([]);
  });
});

describe('unknown hosts', () => {
  test('past HOST_LOOKUPS_PER_SECOND an unknown host is answered 404 without a master-DB query', async () => {
    const limited = await startInstance(t, { HOST_LOOKUPS_PER_SECOND: '5' });
    try {
      const before = limited.ctx.tenants.stats().hostCache;
      const answers = await Promise.all(
        Array.from({ length: 60 }, (_, i) => storeInfo(limited.app, `flood-${i}.unknown.test`)),
      );
      for (const res of answers) expectProblem(res, 404, 'STORE_NOT_FOUND');
      const after = limited.ctx.tenants.stats().hostCache;
      expect(after.misses - before.misses).toBeLessThanOrEqual(10);
      expect(after.lookupsRefused - before.lookupsRefused).toBeGreaterThanOrEqual(50);
    } finally {
      await limited.ctx.close();
    }
  });
});

describe('verification requests', () => {
  test("verifications are bounded per store (429 with Retry-After); a stranger's refused calls do not use them up", async () => {
    const owner = await registerUser(t.app);
    const stranger = await registerUser(t.app);
    const store = await createActiveStore(t, { ownerId: owner.user.id });
    await claim(owner, store.id, 'slow.verify.test').expect(201);
    for (let i = 0; i < HOSTNAME_VERIFICATIONS_PER_WINDOW; i++)
      expectProblem(await verify(stranger, store.id, 'slow.verify.test'), 403, 'FORBIDDEN');
    const asked = dns.asked.length;
    for (let i = 0; i < HOSTNAME_VERIFICATIONS_PER_WINDOW; i++)
      expectProblem(await verify(owner, store.id, 'slow.verify.test'), 409, 'HOSTNAME_NOT_VERIFIED');
    const limited = await verify(owner, store.id, 'slow.verify.test');
    expectProblem(limited, 429, 'RATE_LIMITED');
    expect(Number(limited.headers['retry-after'])).toBeGreaterThan(0);
    // The refused call asked DNS nothing.
    expect(dns.asked.length - asked).toBe(HOSTNAME_VERIFICATIONS_PER_WINDOW);
  });
});
