import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';

/**
 * AES-256-GCM with a random 96-bit IV and the 128-bit auth tag. A ciphertext reads
 * `v2.<keyId>.<iv>.<tag>.<data>` (base64url parts): the key id lets keys rotate — the newest key
 * encrypts, every listed key still decrypts. The additional authenticated data holds the key id and
 * where the ciphertext is stored (table, column, row), so a ciphertext copied into another row or
 * column does not decrypt there.
 *
 * `v1` ciphertexts (written before that, authenticated with the key id only) still decrypt, without the
 * place being checked: they become `v2` when their row is next written.
 */
export interface EncryptionKey {
  id: string;
  key: Buffer;
}

/** Where a ciphertext is stored. Made only by `secretContext`, so a call site cannot misspell one. */
export type SecretContext = string & { readonly [contextBrand]: true };
declare const contextBrand: unique symbol;

const at = (table: string, column: string, ...row: string[]) => `${table}.${column}:${row.join(':')}` as SecretContext;

export const secretContext = {
  /** store_databases.credentials of a store. */
  storeCredentials: (storeId: string) => at('store_databases', 'credentials', storeId),
  /** store_integrations.secrets of a store's integration. */
  storeIntegration: (storeId: string, provider: 'stripe') => at('store_integrations', 'secrets', storeId, provider),
};

/** A ciphertext that cannot be read: malformed, an unknown key, tampered with, or stored at another place. */
export class DecryptionError extends Error {
  override readonly name = 'DecryptionError';
}

/** GCM would accept a tag cut down to 4 bytes (a forgery then needs only 2^32 tries): require all 16. */
const TAG_BYTES = 16;
/** Key ids appear inside the dot-separated ciphertext and in the AAD: no dots, no separators. */
const KEY_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The AAD of a v2 ciphertext: NUL cannot occur in a key id, so the parts cannot run into each other. */
const aadV2 = (id: string, context: SecretContext) => Buffer.from(`v2\0${id}\0${context}`);

export class Encryptor {
  private readonly byId: Map<string, Buffer>;

  constructor(private readonly keys: readonly EncryptionKey[]) {
    if (keys.length === 0) throw new Error('at least one encryption key is needed');
    const bad = keys.find((k) => !KEY_ID.test(k.id));
    if (bad) throw new Error(`bad encryption key id "${bad.id}"`);
    this.byId = new Map(keys.map((k) => [k.id, k.key]));
  }

  /** The key new data is encrypted with (the first listed); streams use it through stream-cipher.ts. */
  currentKey(): EncryptionKey {
    return this.keys[0];
  }

  /** A listed key by its id, or undefined when this process does not have it. */
  keyById(id: string): Buffer | undefined {
    return this.byId.get(id);
  }

  encrypt(plaintext: string, context: SecretContext): string {
    const { id, key } = this.keys[0];
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
    cipher.setAAD(aadV2(id, context));
    const data = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
    const parts = [iv, cipher.getAuthTag(), data].map((b) => b.toString('base64url'));
    return ['v2', id, ...parts].join('.');
  }

  decrypt(ciphertext: string, context: SecretContext): string {
    const parts = ciphertext.split('.');
    if (parts.length !== 5 || (parts[0] !== 'v1' && parts[0] !== 'v2'))
      throw new DecryptionError('not a ciphertext of this format');
    const [version, id, iv, tag, data] = parts;
    const key = this.byId.get(id);
    if (!key) throw new DecryptionError(`no decryption key "${id}" is configured`);
    try {
      const decipher = createDecipheriv('aes-256-gcm', key, Buffer.from(iv, 'base64url'), { authTagLength: TAG_BYTES });
      decipher.setAAD(version === 'v2' ? aadV2(id, context) : Buffer.from(id));
      decipher.setAuthTag(Buffer.from(tag, 'base64url'));
      return Buffer.concat([decipher.update(Buffer.from(data, 'base64url')), decipher.final()]).toString('utf8');
    } catch (err) {
      throw new DecryptionError(
        `the ciphertext does not authenticate (tampered with, another key, or stored elsewhere): ${(err as Error).message}`,
      );
    }
  }

  encryptJson(value: unknown, context: SecretContext): string {
    return this.encrypt(JSON.stringify(value), context);
  }

  decryptJson<T>(ciphertext: string, context: SecretContext): T {
    return JSON.parse(this.decrypt(ciphertext, context)) as T;
  }
}
