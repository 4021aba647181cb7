import { QueryTypes } from 'sequelize';
import { auditEvent } from '../db/audit';
import type { MasterDb } from '../db/master';
import { secretContext, type Encryptor, type SecretContext } from '../lib/crypto';

/**
 * Key rotation that finishes: every ciphertext the master DB stores is encrypted again under the newest key of
 * ENCRYPTION_KEYS, so that an old key can be removed once nothing uses it any more.
 *
 * Batches of BATCH rows, each one transaction: the rows are locked (FOR UPDATE) and each is written back only if
 * it still holds the ciphertext just read (compare-and-set), so a concurrent write is never overwritten — a row
 * changed meanwhile is left to its writer, who encrypted it under the newest key anyway. Idempotent: a run only
 * reads rows not yet under the newest key (a `v2` ciphertext of its id), so a re-run after a crash or a stop
 * carries on, and one after a finished run changes nothing. Reading never breaks while it runs: every listed key
 * still decrypts, and a row holds either its old or its new ciphertext of the same plaintext.
 *
 * The plaintext does not change, so no cached tenant handle is invalidated: a handle keeps the connection
 * settings it decrypted, which are the same.
 */

/** A column holding ciphertexts, and the place (secretContext) each row's ciphertext is bound to. */
interface SecretColumn {
  table: string;
  column: string;
  /** The primary key's columns, in order (keyset pagination and the compare-and-set). */
  key: string[];
  context(row: Record<string, string>): SecretContext;
}

/** Every ciphertext column of the master DB (grep `encryptJson(` / `secretContext.` when adding one). */
export const SECRET_COLUMNS: readonly SecretColumn[] = [
  {
    table: 'store_databases',
    column: 'credentials',
    key: ['store_id'],
    context: (r) => secretContext.storeCredentials(r.store_id),
  },
  // A password rotation's new settings, destined for `credentials` and bound like it (see store-passwords.ts).
  {
    table: 'store_databases',
    column: 'pending_credentials',
    key: ['store_id'],
    context: (r) => secretContext.storeCredentials(r.store_id),
  },
  {
    table: 'store_integrations',
    column: 'secrets',
    key: ['store_id', 'provider'],
    context: (r) => secretContext.storeIntegration(r.store_id, r.provider as 'stripe'),
  },
];

export const BATCH = 200;

export interface KeyDeps {
  master: MasterDb;
  encryptor: Encryptor;
  /** The ids of ENCRYPTION_KEYS, newest (the one that encrypts) first. */
  keyIds: readonly string[];
}

/** How many ciphertexts of one column use one key id. */
export interface KeyUsage {
  table: string;
  column: string;
  keyId: string;
  /** `v1` ciphertexts are not bound to their row: rewritten as `v2` even under the newest key. */
  version: string;
  count: number;
  /** Whether the key id is in ENCRYPTION_KEYS (else these ciphertexts do not decrypt). */
  configured: boolean;
  /** Whether these ciphertexts are what a rotation leaves (v2 under the newest key). */
  current: boolean;
}

export interface KeyStatus {
  newestKeyId: string;
  usage: KeyUsage[];
  /** Ciphertexts not yet under the newest key, per key id (all columns). */
  outdated: Record<string, number>;
  /**
   * Backup archives (store_backups.key_id, not yet expired) per key id. Archives are files and are never
   * re-encrypted: their key is needed until the last of them expires.
   */
  archives: { keyId: string; count: number; until: Date }[];
  /** Configured key ids no ciphertext and no backup archive uses any more: they can be removed from ENCRYPTION_KEYS. */
  unusedKeyIds: string[];
}

export interface RotationFailure {
  table: string;
  column: string;
  row: Record<string, string>;
  error: string;
}

export interface RotationResult {
  newestKeyId: string;
  /** Ciphertexts that needed rotating when the run began. */
  total: number;
  rotated: number;
  /** Rows written by someone else between our read and our write (already under the newest key). */
  changedMeanwhile: number;
  failed: RotationFailure[];
  status: KeyStatus;
}

const q = (name: string) => `"${name}"`;
/** The rows of a column not yet under the newest key ($1). */
const outdatedSql = (c: SecretColumn) =>
  `${q(c.column)} IS NOT NULL AND (split_part(${q(c.column)}, '.', 1) <> 'v2' OR split_part(${q(c.column)}, '.', 2) <> $1)`;

/** How many ciphertexts use each key id, per table and column. */
export async function keyStatus(deps: KeyDeps): Promise<KeyStatus> {
  const [newest] = deps.keyIds;
  const usage: KeyUsage[] = [];
  for (const c of SECRET_COLUMNS) {
    const rows = await deps.master.sequelize.query<{ version: string; keyId: string; count: number }>(
      `SELECT split_part(${q(c.column)}, '.', 1) AS version, split_part(${q(c.column)}, '.', 2) AS "keyId", count(*)::int AS count
         FROM ${q(c.table)} WHERE ${q(c.column)} IS NOT NULL GROUP BY 1, 2 ORDER BY 2, 1`,
      { type: QueryTypes.SELECT },
    );
    for (const r of rows)
      usage.push({
        table: c.table,
        column: c.column,
        ...r,
        configured: deps.keyIds.includes(r.keyId),
        current: r.version === 'v2' && r.keyId === newest,
      });
  }
  const outdated: Record<string, number> = {};
  for (const u of usage.filter((x) => !x.current)) outdated[u.keyId] = (outdated[u.keyId] ?? 0) + u.count;
  // An expired archive is about to be deleted by the retention's task: it no longer needs its key.
  const archives = await deps.master.sequelize.query<{ keyId: string; count: number; until: Date }>(
    `SELECT key_id AS "keyId", count(*)::int AS count, max(expires_at) AS until
       FROM store_backups WHERE key_id IS NOT NULL AND expires_at > now() GROUP BY 1 ORDER BY 1`,
    { type: QueryTypes.SELECT },
  );
  const used = new Set([...usage, ...archives].map((u) => u.keyId));
  return {
    newestKeyId: newest,
    usage,
    outdated,
    archives,
    unusedKeyIds: deps.keyIds.slice(1).filter((id) => !used.has(id)),
  };
}

/**
 * Encrypt every stored secret again under the newest key (see the module comment). `onProgress` hears after
 * each batch how many of `total` rows were handled (rotated, changed meanwhile or failed).
 */
export async function rotateKeys(
  deps: KeyDeps,
  opts: { actor: string; batchSize?: number; onProgress?: (done: number, total: number) => void } = { actor: 'system' },
): Promise<RotationResult> {
  const [newest] = deps.keyIds;
  const batchSize = opts.batchSize ?? BATCH;
  let total = 0;
  for (const c of SECRET_COLUMNS) {
    const [row] = await deps.master.sequelize.query<{ n: number }>(
      `SELECT count(*)::int AS n FROM ${q(c.table)} WHERE ${outdatedSql(c)}`,
      { bind: [newest], type: QueryTypes.SELECT },
    );
    total += row.n;
  }
  const result = { newestKeyId: newest, total, rotated: 0, changedMeanwhile: 0, failed: [] as RotationFailure[] };
  let done = 0;
  opts.onProgress?.(0, total);
  for (const c of SECRET_COLUMNS) {
    let after: string[] | undefined;
    for (;;) {
      const handled = await deps.master.sequelize.transaction(async (t) => {
        const keyList = c.key.map(q).join(', ');
        const cursor = after ? ` AND (${keyList}) > (${c.key.map((_, i) => `$${i + 2}`).join(', ')})` : '';
        const rows = await deps.master.sequelize.query<Record<string, string>>(
          `SELECT ${keyList}, ${q(c.column)} AS ciphertext FROM ${q(c.table)}
            WHERE ${outdatedSql(c)}${cursor} ORDER BY ${keyList} LIMIT ${batchSize} FOR UPDATE`,
          { bind: [newest, ...(after ?? [])], type: QueryTypes.SELECT, transaction: t },
        );
        for (const row of rows) {
          const context = c.context(row);
          let fresh: string;
          try {
            fresh = deps.encryptor.encrypt(deps.encryptor.decrypt(row.ciphertext, context), context);
          } catch (err) {
            result.failed.push({
              table: c.table,
              column: c.column,
              row: Object.fromEntries(c.key.map((k) => [k, row[k]])),
              error: (err as Error).message,
            });
            continue;
          }
          const where = c.key.map((k, i) => `${q(k)} = $${i + 3}`).join(' AND ');
          const [, affected] = await deps.master.sequelize.query(
            `UPDATE ${q(c.table)} SET ${q(c.column)} = $1 WHERE ${q(c.column)} = $2 AND ${where}`,
            { bind: [fresh, row.ciphertext, ...c.key.map((k) => row[k])], type: QueryTypes.UPDATE, transaction: t },
          );
          if (affected === 1) result.rotated++;
          else result.changedMeanwhile++;
        }
        if (rows.length) after = c.key.map((k) => rows[rows.length - 1][k]);
        return rows.length;
      });
      done += handled;
      if (handled) opts.onProgress?.(done, Math.max(total, done));
      if (handled < batchSize) break;
    }
  }
  const status = await keyStatus(deps);
  await auditEvent(deps.master, {
    actorUserId: null,
    action: 'encryption_keys.rotated',
    targetType: 'encryption_key',
    targetId: newest,
    data: {
      actor: opts.actor,
      rotated: result.rotated,
      changedMeanwhile: result.changedMeanwhile,
      failed: result.failed.length,
      outdated: status.outdated,
    },
  });
  return { ...result, status };
}
