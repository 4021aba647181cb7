import { processMaintenance } from '../../src/maintenance';
import { registerUser } from '../helpers/app';
import { adminQuery } from '../helpers/db';
import { useSuite } from '../helpers/suite';
import { createActiveStore } from '../helpers/tenants';

const t = useSuite('purge');

const exists = async (sql: string) => ((await adminQuery(sql)).rowCount ?? 0) > 0;

test('a store deleted more than 30 days ago loses its database, role and hostnames; a recent one keeps them', async () => {
  const owner = await registerUser(t.app);
  const old = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['old.purge.test'] });
  const recent = await createActiveStore(t, { ownerId: owner.user.id, hostnames: ['recent.purge.test'] });
  const { Store, StoreDatabase, StoreHostname, AuditLog } = t.ctx.master.models;
  await Store.update(
    { status: 'deleted', deletedAt: new Date(Date.now() - 31 * 86400_000) },
    { where: { id: old.id } },
  );
  await Store.update({ status: 'deleted', deletedAt: new Date(Date.now() - 86400_000) }, { where: { id: recent.id } });

  expect(await processMaintenance(t.ctx, { task: 'purge-deleted-stores' })).toEqual({ purged: 1 });

  expect(await exists(`SELECT 1 FROM pg_database WHERE datname = '${old.database}'`)).toBe(false);
  expect(await exists(`SELECT 1 FROM pg_roles WHERE rolname = '${old.role}'`)).toBe(false);
  expect(await StoreDatabase.findByPk(old.id)).toBeNull();
  expect(await StoreHostname.count({ where: { storeId: old.id } })).toBe(0);
  expect((await Store.findByPk(old.id))!.status).toBe('deleted');
  expect(await AuditLog.count({ where: { storeId: old.id, action: 'store.purged' } })).toBe(1);

  expect(await exists(`SELECT 1 FROM pg_database WHERE datname = '${recent.database}'`)).toBe(true);
  expect(await StoreDatabase.findByPk(recent.id)).not.toBeNull();
  expect(await StoreHostname.count({ where: { storeId: recent.id } })).toBe(1);

  // Nothing left to do on the next run.
  expect(await processMaintenance(t.ctx, { task: 'purge-deleted-stores' })).toEqual({ purged: 0 });
});
