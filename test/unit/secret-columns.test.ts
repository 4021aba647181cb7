import { SECRET_COLUMNS } from '../../src/hygiene/key-rotation';
import { secretContext } from '../../src/lib/crypto';

/** keys:rotate re-encrypts the columns it knows: every place a ciphertext may be stored must be one of them. */
test('every place secretContext names is a column keys:rotate re-encrypts, bound to the same place', () => {
  const row = { store_id: '5f0c8a7e-0000-4000-8000-000000000001', provider: 'stripe' };
  const places = Object.values(secretContext).map((place) =>
    (place as (...args: string[]) => string)(row.store_id, row.provider),
  );
  const rotated = SECRET_COLUMNS.map((c) => c.context(row));
  for (const place of places) expect(rotated).toContain(place);
  for (const c of SECRET_COLUMNS) expect(c.context(row).startsWith(`${c.table}.`)).toBe(true);
});
