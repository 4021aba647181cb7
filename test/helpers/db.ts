import { randomBytes } from 'node:crypto';
import pg from 'pg';

/** The Postgres server tests run against (an admin URL); CI's .ci/run makes sure it answers. */
export const TEST_SERVER_URL = process.env.TEST_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

export function urlFor(database: string, server = TEST_SERVER_URL): string {
  const u = new URL(server);
  u.pathname = `/${database}`;
  return u.toString();
}

export async function adminQuery(sql: string, server = TEST_SERVER_URL): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: server });
  await client.connect();
  try {
    return await client.query(sql);
  } finally {
    await client.end();
  }
}

/** Refuse to touch a database whose name does not say it is a test database. */
export function assertTestDatabase(name: string): void {
  if (!/test/.test(name) || !/^[a-z0-9_]+$/.test(name))
    throw new Error(`refusing to use "${name}": not a test database name`);
}

export interface TestDatabase {
  name: string;
  url: string;
  drop(): Promise<void>;
}

/**
 * A uniquely named database for one suite, empty or a copy of `template` (see master-template.ts); dropped
 * by drop().
 */
export async function createTestDatabase(
  label: string,
  server = TEST_SERVER_URL,
  opts: { template?: string } = {},
): Promise<TestDatabase> {
  const name = `tenantry_test_${label}_${randomBytes(4).toString('hex')}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  assertTestDatabase(name);
  await adminQuery(`CREATE DATABASE ${name}${opts.template ? ` TEMPLATE ${opts.template}` : ''}`, server);
  return {
    name,
    url: urlFor(name, server),
    drop: async () => {
      assertTestDatabase(name);
      await adminQuery(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`, server);
    },
  };
}

/** Servers tests may provision on, by `host:port`: the main test server and the second one. */
export const SECOND_SERVER_URL = process.env.TEST_SECOND_DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5433/postgres';

/** Drop a managed tenant database and its role (named alike) that a test provisioned. */
export async function dropManagedDatabase(serverKey: string, database: string): Promise<void> {
  assertTestDatabase(database);
  const server = [TEST_SERVER_URL, SECOND_SERVER_URL].find((u) => {
    const url = new URL(u);
    return `${url.hostname}:${url.port || 5432}` === serverKey;
  });
  if (!server) return;
  await adminQuery(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`, server);
  await adminQuery(`DROP ROLE IF EXISTS ${database}`, server);
}
