import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { loadConfig } from '../../src/config';

/** REDIS_PREFIX by default: one namespace per master database, so clones sharing one Redis never mix. */
const secrets = {
  JWT_SECRET: 'a-secret-of-at-least-32-characters-0123456789',
  ENCRYPTION_KEYS: `k1:${Buffer.alloc(32, 1).toString('base64')}`,
};

let root: string;
beforeAll(() => {
  root = mkdtempSync(path.join(tmpdir(), 'tenantry-prefix-'));
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const prefixOf = (env: Record<string, string>) => loadConfig({ ...secrets, ...env }).redisPrefix;

test('with the embedded master, two clones (two DATA_DIRs) get different prefixes, and each keeps its own across starts', () => {
  const first = prefixOf({ DATA_DIR: path.join(root, 'clone-a/.data') });
  const second = prefixOf({ DATA_DIR: path.join(root, 'clone-b/.data') });
  expect(first).toMatch(/^tenantry:[0-9a-f]{8}$/);
  expect(second).toMatch(/^tenantry:[0-9a-f]{8}$/);
  expect(first).not.toBe(second);
  expect(prefixOf({ DATA_DIR: path.join(root, 'clone-a/.data') })).toBe(first);
  // The same folder however it is spelled.
  expect(prefixOf({ DATA_DIR: path.join(root, 'clone-a/x/../.data') })).toBe(first);
});

test('with DATABASE_URL, every instance of the deployment shares `tenantry`, wherever its DATA_DIR is', () => {
  const url = 'postgres://app:pw@db.internal:5432/tenantry';
  expect(prefixOf({ DATABASE_URL: url, DATA_DIR: path.join(root, 'host-1') })).toBe('tenantry');
  expect(prefixOf({ DATABASE_URL: url, DATA_DIR: path.join(root, 'host-2') })).toBe('tenantry');
});

test('REDIS_PREFIX, when set, is used as it is', () => {
  expect(prefixOf({ REDIS_PREFIX: 'shop-a', DATA_DIR: path.join(root, 'clone-a/.data') })).toBe('shop-a');
  expect(() => prefixOf({ REDIS_PREFIX: 'with space', DATA_DIR: root })).toThrow(/REDIS_PREFIX/);
});
