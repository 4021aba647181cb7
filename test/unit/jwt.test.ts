import { generateKeyPairSync, randomUUID } from 'node:crypto';
import jwt from 'jsonwebtoken';
import { InvalidTokenError, TokenSigner, type PlatformClaims, type StoreClaims } from '../../src/lib/jwt';

const settings = {
  secret: 'unit-test-secret-that-is-long-enough-0123456789',
  expiresIn: '15m',
  issuer: 'tenantry',
  audience: 'tenantry-api',
};
const signer = new TokenSigner(settings);

const platform: PlatformClaims = { sub: randomUUID(), typ: 'platform', role: 'user', storeId: null };
const store: StoreClaims = { sub: randomUUID(), typ: 'store', role: 'customer', storeId: randomUUID() };

const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
const now = () => Math.floor(Date.now() / 1000);

/** A payload that is right in every way but the one a test changes. */
function payload(extra: Record<string, unknown> = {}) {
  return {
    ...platform,
    jti: randomUUID(),
    iat: now(),
    exp: now() + 600,
    iss: settings.issuer,
    aud: settings.audience,
    ...extra,
  };
}

/** Sign any payload with our secret and algorithm, bypassing TokenSigner's own checks. */
const signRaw = (p: object, secret = settings.secret, algorithm: jwt.Algorithm = 'HS256') =>
  jwt.sign(p, secret, { algorithm });

function expectRefused(token: string, message?: RegExp) {
  let error: unknown;
  try {
    signer.verify(token);
  } catch (err) {
    error = err;
  }
  expect(error).toBeInstanceOf(InvalidTokenError);
  if (message) expect((error as Error).message).toMatch(message);
}

describe('TokenSigner', () => {
  test('a token it signed verifies and carries the claims, a jti, iat and exp', () => {
    const { token, jti } = signer.sign(platform);
    const claims = signer.verify(token);
    expect(claims).toMatchObject({ ...platform, jti });
    expect(claims.exp - claims.iat).toBe(15 * 60);
    expect(jwt.decode(token, { complete: true })?.header.alg).toBe('HS256');
  });

  test('store tokens verify as store tokens', () => {
    const claims = signer.verify(signer.sign(store).token);
    expect(claims).toMatchObject(store);
  });

  test('every token gets its own jti', () => {
    expect(signer.sign(platform).jti).not.toBe(signer.sign(platform).jti);
  });

  test('a plain number of seconds as expiresIn means seconds, not milliseconds', () => {
    const s = new TokenSigner({ ...settings, expiresIn: '3600' });
    const claims = s.verify(s.sign(platform).token);
    expect(claims.exp - claims.iat).toBe(3600);
  });

  test('refuses alg "none" (an unsigned token)', () => {
    const p = payload();
    expectRefused(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(p)}.`);
    expectRefused(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(p)}`);
    // "None" spelled differently, and a none header carrying the good signature of another token.
    expectRefused(`${b64({ alg: 'None', typ: 'JWT' })}.${b64(p)}.`);
    const goodSignature = signRaw(p).split('.')[2];
    expectRefused(`${b64({ alg: 'none', typ: 'JWT' })}.${b64(p)}.${goodSignature}`);
  });

  test('refuses HS512 even when signed with the right secret', () => {
    expectRefused(signRaw(payload(), settings.secret, 'HS512'), /invalid algorithm/);
  });

  test('refuses RS256', () => {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const token = jwt.sign(payload(), privateKey.export({ type: 'pkcs8', format: 'pem' }), { algorithm: 'RS256' });
    expectRefused(token);
  });

  test('refuses a token signed with another secret', () => {
    expectRefused(signRaw(payload(), 'another-secret-that-is-long-enough-0123456789'), /invalid signature/);
    const other = new TokenSigner({ ...settings, secret: 'another-secret-that-is-long-enough-0123456789' });
    expectRefused(other.sign(platform).token, /invalid signature/);
  });

  test('refuses a token whose payload was changed after signing', () => {
    const [header, , signature] = signer.sign(platform).token.split('.');
    const forged = b64(payload({ role: 'platform_admin' }));
    expectRefused(`${header}.${forged}.${signature}`, /invalid signature/);
  });

  test('refuses an expired token', () => {
    expectRefused(signRaw(payload({ iat: now() - 7200, exp: now() - 60 })), /expired/);
  });

  test('refuses a token without an expiry', () => {
    const p: Record<string, unknown> = payload();
    delete p.exp;
    expectRefused(signRaw(p));
  });

  test('refuses the wrong issuer or audience, and a token with none', () => {
    expectRefused(signRaw(payload({ iss: 'someone-else' })), /issuer/);
    expectRefused(signRaw(payload({ aud: 'another-api' })), /audience/);
    const p: Record<string, unknown> = payload();
    delete p.iss;
    delete p.aud;
    expectRefused(signRaw(p));
    const elsewhere = new TokenSigner({ ...settings, issuer: 'other', audience: 'other-api' });
    expectRefused(elsewhere.sign(platform).token);
  });

  test.each([
    ['an unknown typ', { typ: 'admin' }],
    ['no typ', { typ: undefined }],
    ['a platform token with a store role', { typ: 'platform', role: 'admin' }],
    ['a platform token with a numeric storeId', { typ: 'platform', storeId: 42 }],
    ['a store token without a storeId', { typ: 'store', role: 'admin', storeId: null }],
    ['a store token with a platform role', { typ: 'store', role: 'platform_admin', storeId: randomUUID() }],
    ['no subject', { sub: undefined }],
    ['a numeric subject', { sub: 7 }],
    ['no jti', { jti: undefined }],
  ])('refuses claims of an unknown kind: %s', (_name, change) => {
    expectRefused(signRaw(JSON.parse(JSON.stringify(payload(change)))), /not of a known kind/);
  });

  test('refuses garbage', () => {
    expectRefused('not-a-jwt');
    expectRefused('a.b.c');
    expectRefused('');
  });
});
