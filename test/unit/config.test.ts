import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config';

const key32 = (fill: number) => Buffer.alloc(32, fill).toString('base64');
const secrets = {
  JWT_SECRET: 'a-production-secret-of-at-least-32-characters',
  ENCRYPTION_KEYS: `k2:${key32(2)},k1:${key32(1)}`,
};
const production = {
  NODE_ENV: 'production',
  ...secrets,
  PAYMENTS_PROVIDER: 'stripe',
  STRIPE_WEBHOOK_SECRET: 'whsec_test',
};

/** The message loadConfig throws for this environment (fails the test when it does not throw). */
function problemWith(env: NodeJS.ProcessEnv): string {
  try {
    loadConfig(env);
  } catch (err) {
    return (err as Error).message;
  }
  throw new Error('expected the configuration to be refused');
}

let dataDir: string;
beforeEach(() => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'tenantry-config-'));
});
afterEach(() => rmSync(dataDir, { recursive: true, force: true }));

describe('loadConfig', () => {
  test('applies the documented defaults', () => {
    const c = loadConfig({ ...secrets, DATA_DIR: dataDir });
    expect(c).toMatchObject({
      port: 3000,
      env: 'development',
      isProduction: false,
      databaseUrl: undefined,
      embeddedPgPort: 54329,
      redisUrl: 'redis://127.0.0.1:6379',
      tenantServers: [],
      worker: true,
      paymentsProvider: 'manual',
      trustProxy: false,
      corsOrigins: [],
      logLevel: 'info',
      bcryptRounds: 12,
      jwt: { secret: secrets.JWT_SECRET, expiresIn: '7d', issuer: 'tenantry', audience: 'tenantry-api' },
      tenant: {
        cacheMax: 5000,
        poolMax: 5,
        idleMs: 10000,
        connectionsMax: 60,
        acquireTimeoutMs: 1500,
        fenceMs: 5000,
        externalPublicOnly: true,
      },
      rateLimit: { loginMax: 10, registerMax: 20, windowMs: 900000 },
    });
    expect(c.encryptionKeys.map((k) => k.id)).toEqual(['k2', 'k1']);
    expect(c.encryptionKeys[0].key).toEqual(Buffer.alloc(32, 2));
    expect(Object.isFrozen(c)).toBe(true);
  });

  test('parses lists, switches and the proxy setting', () => {
    const c = loadConfig({
      ...secrets,
      DATA_DIR: dataDir,
      CORS_ORIGINS: 'https://admin.example.com,https://wizard.example.com',
      TENANT_SERVERS: 'postgres://a@db1/postgres, postgres://b@db2/postgres',
      WORKER: 'off',
      TRUST_PROXY: '2',
      PORT: '8080',
    });
    expect(c.corsOrigins).toEqual(['https://admin.example.com', 'https://wizard.example.com']);
    expect(c.tenantServers).toEqual(['postgres://a@db1/postgres', 'postgres://b@db2/postgres']);
    expect(c.worker).toBe(false);
    expect(c.trustProxy).toBe(2);
    expect(c.port).toBe(8080);
    expect(loadConfig({ ...secrets, TRUST_PROXY: 'on' }).trustProxy).toBe(true);
    expect(loadConfig({ ...secrets, TRUST_PROXY: 'loopback' }).trustProxy).toBe('loopback');
  });

  test('PLATFORM_ADMIN_EMAILS is not read any more: platform admins are granted with the command line', () => {
    const c = loadConfig({ ...secrets, DATA_DIR: dataDir, PLATFORM_ADMIN_EMAILS: 'boss@example.com' });
    expect(c).not.toHaveProperty('platformAdminEmails');
    expect(JSON.stringify(c)).not.toContain('boss@example.com');
  });

  test('external databases on private networks are refused in every environment unless EXTERNAL_DB_PRIVATE_NETWORKS=allow', () => {
    for (const NODE_ENV of ['development', 'test', 'production']) {
      const env = { ...(NODE_ENV === 'production' ? production : secrets), NODE_ENV, DATA_DIR: dataDir };
      expect(loadConfig(env).tenant.externalPublicOnly).toBe(true);
      expect(loadConfig({ ...env, EXTERNAL_DB_PRIVATE_NETWORKS: 'allow' }).tenant.externalPublicOnly).toBe(false);
    }
  });

  test('a complete production configuration loads', () => {
    const c = loadConfig({ ...production, DATABASE_URL: 'postgres://app:pw@db.internal:5432/tenantry' });
    expect(c.isProduction).toBe(true);
    expect(c.paymentsProvider).toBe('stripe');
    expect(c.startupNotes).toEqual([]);
  });

  test('in production, missing JWT_SECRET and ENCRYPTION_KEYS stop the start naming both', () => {
    const message = problemWith({
      NODE_ENV: 'production',
      PAYMENTS_PROVIDER: 'stripe',
      STRIPE_WEBHOOK_SECRET: 'whsec_x',
      DATA_DIR: dataDir,
    });
    expect(message).toMatch(/Missing secrets in production/);
    expect(message).toContain('JWT_SECRET');
    expect(message).toContain('ENCRYPTION_KEYS');
    expect(message).toContain('.env.example');
  });

  test('in production, a missing ENCRYPTION_KEYS alone is named, and no development secrets are written', () => {
    const message = problemWith({ ...production, ENCRYPTION_KEYS: undefined, DATA_DIR: dataDir });
    expect(message).toMatch(/Missing secrets in production: ENCRYPTION_KEYS\./);
    expect(() => statSync(path.join(dataDir, 'dev-secrets.json'))).toThrow();
  });

  test('PAYMENTS_PROVIDER=manual is refused in production', () => {
    expect(problemWith({ ...production, PAYMENTS_PROVIDER: 'manual' })).toMatch(
      /PAYMENTS_PROVIDER=manual .* refused in production/,
    );
  });

  test('PAYMENTS_PROVIDER=stripe needs STRIPE_WEBHOOK_SECRET', () => {
    expect(problemWith({ ...production, STRIPE_WEBHOOK_SECRET: undefined })).toMatch(/STRIPE_WEBHOOK_SECRET/);
  });

  test('a port that is not a number is reported under PORT', () => {
    const message = problemWith({ ...secrets, PORT: 'abc' });
    expect(message).toMatch(/^Invalid configuration:/);
    expect(message).toMatch(/PORT:/);
  });

  test('an encryption key of 16 bytes is reported, naming the key', () => {
    expect(problemWith({ ...secrets, ENCRYPTION_KEYS: `short:${Buffer.alloc(16, 1).toString('base64')}` })).toMatch(
      /ENCRYPTION_KEYS.*"short" must be 32 bytes/,
    );
  });

  test('ENCRYPTION_KEYS entries without a key id, with a bad id, or none at all are reported', () => {
    expect(problemWith({ ...secrets, ENCRYPTION_KEYS: key32(1) })).toMatch(/ENCRYPTION_KEYS/);
    expect(problemWith({ ...secrets, ENCRYPTION_KEYS: `bad id!:${key32(1)}` })).toMatch(/ENCRYPTION_KEYS.*bad key id/);
    expect(problemWith({ ...secrets, ENCRYPTION_KEYS: ' , ' })).toMatch(/ENCRYPTION_KEYS/);
  });

  test('every bad key is reported together, not one per start', () => {
    const message = problemWith({
      ...secrets,
      PORT: 'abc',
      ENCRYPTION_KEYS: `k1:${Buffer.alloc(16).toString('base64')}`,
      JWT_SECRET: 'too-short',
      LOG_LEVEL: 'loud',
      WORKER: 'maybe',
      TENANT_POOL_MAX: '0',
    });
    for (const name of ['PORT', 'ENCRYPTION_KEYS', 'JWT_SECRET', 'LOG_LEVEL', 'WORKER', 'TENANT_POOL_MAX']) {
      expect(message).toMatch(new RegExp(`^  ${name}: `, 'm'));
    }
  });

  test('rejects a JWT_EXPIRES_IN that is not a duration and a DATABASE_URL that is not a URL', () => {
    expect(problemWith({ ...secrets, JWT_EXPIRES_IN: 'forever' })).toMatch(/JWT_EXPIRES_IN/);
    expect(problemWith({ ...secrets, DATABASE_URL: 'not a url' })).toMatch(/DATABASE_URL/);
  });

  test('outside production, missing secrets are generated once into DATA_DIR/dev-secrets.json and reused', () => {
    const first = loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    const file = path.join(dataDir, 'dev-secrets.json');
    const stored = JSON.parse(readFileSync(file, 'utf8')) as { JWT_SECRET: string; ENCRYPTION_KEYS: string };
    expect(first.jwt.secret).toBe(stored.JWT_SECRET);
    expect(first.jwt.secret.length).toBeGreaterThanOrEqual(32);
    expect(first.encryptionKeys).toHaveLength(1);
    expect(first.encryptionKeys[0].key).toHaveLength(32);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(first.startupNotes.join('\n')).toMatch(/Generated development secrets for JWT_SECRET, ENCRYPTION_KEYS/);

    const second = loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir });
    expect(second.jwt.secret).toBe(first.jwt.secret);
    expect(second.encryptionKeys[0]).toEqual(first.encryptionKeys[0]);
    expect(second.startupNotes.join('\n')).toMatch(/Using development secrets/);
  });

  test('a configured secret wins over the generated one', () => {
    const c = loadConfig({ NODE_ENV: 'development', DATA_DIR: dataDir, JWT_SECRET: secrets.JWT_SECRET });
    expect(c.jwt.secret).toBe(secrets.JWT_SECRET);
    expect(c.startupNotes.join('\n')).toMatch(/for ENCRYPTION_KEYS in/);
    expect(c.startupNotes.join('\n')).not.toMatch(/JWT_SECRET/);
  });

  test('.env.example documents every key the configuration reads, and no other', () => {
    const root = path.resolve(__dirname, '../..');
    const source = readFileSync(path.join(root, 'src/config.ts'), 'utf8');
    const schema = source.slice(
      source.indexOf('const EnvSchema = z.object({'),
      source.indexOf('\n});', source.indexOf('const EnvSchema')),
    );
    const schemaKeys = [...schema.matchAll(/^ {2}([A-Z][A-Z0-9_]+):/gm)].map((m) => m[1]).sort();
    expect(schemaKeys.length).toBeGreaterThan(20);

    const example = readFileSync(path.join(root, '.env.example'), 'utf8').split('\n');
    const documented = example.flatMap((line, i) => {
      const m = /^#? ?([A-Z][A-Z0-9_]+)=/.exec(line);
      if (!m) return [];
      // Each key has an explanation on the line above it.
      expect(example[i - 1]).toMatch(/^# \S/);
      return [m[1]];
    });
    expect([...new Set(documented)].sort()).toEqual(schemaKeys);
  });
});
