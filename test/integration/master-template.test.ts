import { runMigrations } from '../../src/db/migrate';
import { adminQuery, SECOND_SERVER_URL, type TestDatabase } from '../helpers/db';
import { createMasterTestDatabase, ensureMasterTemplate, masterTemplateName } from '../helpers/master-template';
import { useResources } from '../helpers/suite';

// On the second server, where only this file builds master templates: dropping one there disturbs no other run.
const server = SECOND_SERVER_URL;
const s = useResources();

const templates = async () =>
  (
    await adminQuery(
      "SELECT datname, datallowconn FROM pg_database WHERE datname LIKE 'tenantry\\_master\\_test\\_tpl\\_%' ORDER BY 1",
      server,
    )
  ).rows as { datname: string; datallowconn: boolean }[];

async function masterDatabase(): Promise<TestDatabase> {
  const db = await createMasterTestDatabase('master_tpl', server);
  s.defer(`the database ${db.name}`, () => db.drop());
  return db;
}

const dropTemplates = async () => {
  for (const { datname } of await templates()) await adminQuery(`DROP DATABASE ${datname}`, server);
};

beforeAll(async () => {
  await dropTemplates();
  s.defer('the master templates on the second server', dropTemplates);
});

test("suites on a server without the template build it once; each copy is migrated, so the context's runMigrations applies nothing", async () => {
  const copies = await Promise.all([1, 2, 3, 4].map(() => masterDatabase()));
  for (const db of copies)
    expect(await runMigrations('master', { connectionString: db.url })).toMatchObject({ applied: [] });
  // Closed to connections, so nothing can keep the next suite from copying it.
  expect(await templates()).toEqual([{ datname: masterTemplateName(), datallowconn: false }]);
});

test('what an interrupted build left is cleared, and a template of another schema is dropped once no run is likely to copy it', async () => {
  const name = masterTemplateName();
  await adminQuery(`DROP DATABASE ${name}`, server);
  const left = ['tenantry_master_test_tpl_aaaaaaaaaaaa_building', `${name}_building`];
  const older = {
    old: 'tenantry_master_test_tpl_000000000000',
    recent: 'tenantry_master_test_tpl_111111111111',
    unlabelled: 'tenantry_master_test_tpl_222222222222',
  };
  for (const db of [...left, ...Object.values(older)]) {
    await adminQuery(`CREATE DATABASE ${db}`, server);
    s.defer(`the database ${db}`, () => adminQuery(`DROP DATABASE IF EXISTS ${db}`, server));
  }
  await adminQuery(`COMMENT ON DATABASE ${older.old} IS '${new Date(Date.now() - 3600_000).toISOString()}'`, server);
  await adminQuery(`COMMENT ON DATABASE ${older.recent} IS '${new Date().toISOString()}'`, server);

  await ensureMasterTemplate(server);
  expect((await templates()).map((t) => t.datname).sort()).toEqual([older.recent, name].sort());
  expect(await runMigrations('master', { connectionString: (await masterDatabase()).url })).toMatchObject({
    applied: [],
  });
});
