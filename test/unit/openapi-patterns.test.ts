import net from 'node:net';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { RegisterBody } from '../../src/auth/auth.schemas';
import { parseConnectionString, readHost } from '../../src/provisioning/connection-string';
import { checkClaimableHostname } from '../../src/stores/hostname-policy';
import { CreateStoreBody } from '../../src/stores/stores.schemas';
import { z } from 'zod';

/**
 * The OpenAPI document's patterns accept only what the API accepts: a client that checks a value against the
 * document before sending it is never answered 400 for its form. Each pattern is read from the checked-in
 * document (what clients see) and tried on many generated values: every value it matches must be one the
 * validator takes.
 */
type Json = Record<string, any>;
const document: Json = JSON.parse(readFileSync(path.join(__dirname, '../../clients/typescript/openapi.json'), 'utf8'));
const body = (p: string, method: string): Json =>
  document.paths[p][method].requestBody.content['application/json'].schema;
const regex = (pattern: string) => new RegExp(pattern, 'u');

/** A small seeded generator, so that a failure can be replayed. */
function random(seed: number) {
  let s = seed >>> 0;
  const next = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let x = s;
    x = Math.imul(x ^ (x >>> 15), x | 1);
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61);
    return ((x ^ (x >>> 14)) >>> 0) / 2 ** 32;
  };
  const int = (n: number) => Math.floor(next() * n);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)];
  const text = (alphabet: readonly string[], min: number, max: number) =>
    Array.from({ length: min + int(max - min + 1) }, () => pick(alphabet)).join('');
  return { int, pick, text, chance: (p: number) => next() < p };
}

const chars = (s: string) => [...s];
const HEX = chars('0123456789abcdefABCDEF');
const LABEL_CHARS = chars('abcdefghijklmnopqrstuvwxyz0123456789-ABC');

function dnsName(r: ReturnType<typeof random>): string {
  const labels = Array.from({ length: 1 + r.int(4) }, () =>
    r.chance(0.05) ? r.text(LABEL_CHARS, 60, 66) : r.text(LABEL_CHARS, 0, 12),
  );
  if (r.chance(0.3)) labels[labels.length - 1] = r.pick(['1', '0x7f', '127', 'localhost', 'com', 'xn--p1ai', '9a']);
  return labels.join('.') + (r.chance(0.1) ? '.' : '');
}
function ipv4(r: ReturnType<typeof random>): string {
  return Array.from({ length: r.chance(0.9) ? 4 : 1 + r.int(5) }, () =>
    String(r.chance(0.1) ? r.int(400) : r.int(256)).padStart(r.chance(0.05) ? 3 : 0, '0'),
  ).join('.');
}
function ipv6(r: ReturnType<typeof random>): string {
  const groups = Array.from({ length: 1 + r.int(9) }, () =>
    r.text(HEX, r.chance(0.05) ? 0 : 1, r.chance(0.05) ? 5 : 4),
  );
  if (r.chance(0.6)) groups.splice(r.int(groups.length + 1), 0, r.chance(0.9) ? '' : '::');
  let text = groups.join(':');
  if (text.startsWith(':') && !text.startsWith('::')) text = `:${text}`;
  if (text.endsWith(':') && !text.endsWith('::')) text = `${text}:`;
  return text;
}

const TRIES = 20_000;

test('an owner database host the document accepts is one the API reads', () => {
  const external = body('/api/stores/{id}/database', 'post').anyOf[2].properties;
  const pattern = regex(external.host.pattern);
  const r = random(1);
  let matched = 0;
  for (let i = 0; i < TRIES; i++) {
    const host = r.pick([dnsName, ipv4, ipv6, (g: typeof r) => `[${ipv6(g)}]`])(r);
    if (!pattern.test(host)) continue;
    matched++;
    expect([host, readHost(host, { bareIpv6: true }) !== undefined]).toEqual([host, true]);
  }
  expect(matched).toBeGreaterThan(TRIES / 4);
  for (const host of ['127.1', '0x7f000001', '2130706433', '::1%eth0', '/var/run/postgresql', 'a..b', 'db example', ''])
    expect([host, pattern.test(host)]).toEqual([host, false]);
});

test('an IPv6 address the document accepts is one', () => {
  const external = body('/api/stores/{id}/database', 'post').anyOf[2].properties;
  const pattern = regex(external.host.pattern);
  const r = random(2);
  let matched = 0;
  for (let i = 0; i < TRIES; i++) {
    const address = ipv6(r);
    // In brackets: the other forms of the host pattern are DNS names and IPv4 addresses.
    if (!pattern.test(`[${address}]`)) continue;
    matched++;
    expect([address, net.isIPv6(address)]).toEqual([address, true]);
  }
  expect(matched).toBeGreaterThan(TRIES / 10);
});

test('a connection string the document accepts is one the parser takes', () => {
  const schema = body('/api/stores/{id}/database', 'post').anyOf[1].properties.connectionString;
  const pattern = regex(schema.pattern);
  const r = random(3);
  const clean = chars("abcXYZ019-._~!$&'()*+,;=").concat(['%40', '%2F', '%3A', '%25', '%20', '%7E']);
  const noisy = clean.concat(['%7F', '%00', '%C3%A9', '%E0', '@', ':', '/', '?', '#', ' ', 'é', '%']);
  const part = (min: number, max: number) => r.text(r.chance(0.7) ? clean : noisy, min, max);
  const query = [
    '',
    '',
    '?sslmode=require',
    '?sslmode=disable',
    '?sslmode=verify-full',
    '?sslmode=prefer',
    '?sslrootcert=/etc/passwd',
    '?sslmode=require&sslmode=disable',
    '?host=/tmp',
  ];
  let matched = 0;
  for (let i = 0; i < TRIES; i++) {
    const user = part(0, r.chance(0.05) ? 70 : 6);
    const password = r.chance(0.2) ? '' : `:${part(0, 8)}`;
    const host = r.pick([dnsName, ipv4, (g: typeof r) => `[${ipv6(g)}]`, ipv6])(r);
    const port = r.chance(0.3) ? '' : `:${r.pick([String(1 + r.int(65535)), '0', '65536', '05432', 'x'])}`;
    const database = r.chance(0.05) ? '' : `/${part(0, r.chance(0.05) ? 70 : 6)}`;
    const text = `${r.pick(['postgres', 'postgresql', 'mysql'])}://${user}${password}@${host}${port}${database}${r.pick(query)}`;
    if (!pattern.test(text) || text.length > schema.maxLength) continue;
    matched++;
    const parsed = parseConnectionString(text);
    expect([text, parsed.ok ? 'ok' : parsed.reason]).toEqual([text, 'ok']);
  }
  expect(matched).toBeGreaterThan(TRIES / 50);
});

test('a store hostname the document accepts is refused only for what depends on the deployment', () => {
  const schema = body('/api/stores/{id}/hostnames', 'post').properties.hostname;
  const pattern = regex(schema.pattern);
  const policy = { storeDomain: 'shops.example.net', platform: ['api.example.net'] };
  const r = random(4);
  let matched = 0;
  for (let i = 0; i < TRIES; i++) {
    const name = r.chance(0.1)
      ? `${dnsName(r)}.${r.pick(policy.platform.concat(policy.storeDomain))}`
      : dnsName(r).toLowerCase();
    if (!pattern.test(name)) continue;
    matched++;
    const verdict = checkClaimableHostname(name, policy);
    const reason = verdict.ok
      ? 'ok'
      : /platform|issued by the platform/.test(verdict.detail)
        ? 'the deployment'
        : verdict.detail;
    expect([name, reason]).toEqual([name, expect.stringMatching(/^(ok|the deployment)$/)]);
  }
  expect(matched).toBeGreaterThan(TRIES / 10);
  for (const name of ['localhost', 'shop.localhost', '127.0.0.1', '10.1', 'shop', 'shop.123', 'shop.0x1f'])
    expect([name, pattern.test(name)]).toEqual([name, false]);
});

test('an e-mail address, a UUID and a name the document accepts are ones the validators take', () => {
  const register = body('/api/auth/register', 'post').properties;
  const email = regex(register.email.pattern);
  const name = regex(register.name.pattern);
  const r = random(5);
  const clean = chars("ab.Z09_'+-");
  const noisy = clean.concat(['@', '.', ' ', 'é', '"']);
  let matched = 0;
  for (let i = 0; i < TRIES; i++) {
    const text = (min: number, max: number) => r.text(r.chance(0.7) ? clean : noisy, min, max);
    const candidate = `${text(0, 8)}@${text(0, 8)}.${r.text(chars('abcZ1-'), 0, 4)}`;
    if (!email.test(candidate)) continue;
    matched++;
    const parsed = RegisterBody.safeParse({ email: candidate, password: 'long enough', name: 'A' });
    expect([candidate, parsed.success]).toEqual([candidate, true]);
  }
  expect(matched).toBeGreaterThan(100);

  for (const blank of [' ', '\t\n', '']) expect(name.test(blank)).toBe(false);
  expect(name.test('  Ada  ')).toBe(true);
  expect(CreateStoreBody.safeParse({ name: '  Ada  ', slug: 'ada-shop' }).success).toBe(true);

  const id = regex(document.paths['/api/stores/{id}'].get.parameters.find((p: Json) => p.name === 'id').schema.pattern);
  for (const uuid of [
    '00000000-0000-0000-0000-000000000000',
    '3f2b8c1e-9d4a-4f6b-8a2c-1e5d7f9b0c3a',
    '3f2b8c1e-9d4a-0f6b-8a2c-1e5d7f9b0c3a',
    '3f2b8c1e-9d4a-4f6b-ca2c-1e5d7f9b0c3a',
  ]) {
    expect([uuid, id.test(uuid)]).toEqual([uuid, z.uuid().safeParse(uuid).success]);
  }
});

test('what the document says of bodies: required, closed to unknown fields, a product change needs one field', () => {
  for (const [p, item] of Object.entries(document.paths as Json)) {
    for (const [method, operation] of Object.entries(item as Json)) {
      if (!operation.requestBody) continue;
      expect([method, p, operation.requestBody.required]).toEqual([method, p, true]);
    }
  }
  expect(body('/api/auth/register', 'post').additionalProperties).toBe(false);
  expect(body('/api/store/products/{id}', 'patch')).toMatchObject({ minProperties: 1, additionalProperties: false });
  // PATCH {} renames nothing and changes no profile field: accepted (API.md: every field optional).
  expect(body('/api/stores/{id}', 'patch').minProperties).toBeUndefined();
  expect(body('/api/auth/profile', 'patch').minProperties).toBeUndefined();
  const service = regex(body('/api/stores/{id}/credits/spend', 'post').properties.service.pattern);
  expect(['email', 'ai_description', 'image_processing'].every((s) => service.test(s))).toBe(true);
  expect(['', 'E-mail', 'a'.repeat(65)].some((s) => service.test(s))).toBe(false);
});
