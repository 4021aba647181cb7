import { createCipheriv, randomBytes } from 'node:crypto';
import { DecryptionError, Encryptor, secretContext, type EncryptionKey } from '../../src/lib/crypto';

const key = (id: string) => ({ id, key: randomBytes(32) });
const storeA = '6f1c1f8e-0000-4000-8000-00000000000a';
const storeB = '6f1c1f8e-0000-4000-8000-00000000000b';
const here = secretContext.storeCredentials(storeA);

/** A ciphertext as the code before row binding wrote it: AAD = the key id only. */
function legacyV1({ id, key: bytes }: EncryptionKey, plaintext: string): string {
  const iv = randomBytes(12);
  const cipher = createCipheriv('aes-256-gcm', bytes, iv, { authTagLength: 16 });
  cipher.setAAD(Buffer.from(id));
  const data = Buffer.concat([cipher.update(plaintext, 'utf8'), cipher.final()]);
  return ['v1', id, ...[iv, cipher.getAuthTag(), data].map((b) => b.toString('base64url'))].join('.');
}

/** Replace one dot-separated part of a ciphertext (1 key id, 2 iv, 3 tag, 4 data). */
function withPart(ciphertext: string, index: number, change: (b: Buffer) => Buffer | string): string {
  const parts = ciphertext.split('.');
  const changed = change(Buffer.from(parts[index], 'base64url'));
  parts[index] = typeof changed === 'string' ? changed : changed.toString('base64url');
  return parts.join('.');
}
const flipFirstByte = (b: Buffer) => {
  const c = Buffer.from(b);
  c[0] ^= 0x01;
  return c;
};

describe('Encryptor (AES-256-GCM)', () => {
  const old = key('old');
  const current = key('new');

  test('decrypts what it encrypted, including unicode and JSON', () => {
    const enc = new Encryptor([current]);
    const secret = 'postgres://shop:pässwörd@db.example:5432/shop_1 ✓';
    expect(enc.decrypt(enc.encrypt(secret, here), here)).toBe(secret);
    const value = { host: 'db', port: 5432, password: 's3cret', ssl: true };
    expect(enc.decryptJson(enc.encryptJson(value, here), here)).toEqual(value);
    expect(enc.decrypt(enc.encrypt('', here), here)).toBe('');
  });

  test('never shows the plaintext and writes v2.<keyId>.<iv>.<tag>.<data>', () => {
    const enc = new Encryptor([current]);
    const c = enc.encrypt('super-secret-password', here);
    expect(c).not.toContain('super-secret-password');
    const [version, id, iv, tag] = c.split('.');
    expect(version).toBe('v2');
    expect(id).toBe('new');
    expect(Buffer.from(iv, 'base64url')).toHaveLength(12);
    expect(Buffer.from(tag, 'base64url')).toHaveLength(16);
  });

  test('gives a different ciphertext every time (random IV)', () => {
    const enc = new Encryptor([current]);
    const seen = new Set(Array.from({ length: 50 }, () => enc.encrypt('same text', here)));
    expect(seen.size).toBe(50);
    const ivs = new Set([...seen].map((c) => c.split('.')[2]));
    expect(ivs.size).toBe(50);
  });

  describe('refuses a tampered ciphertext', () => {
    const enc = new Encryptor([current]);
    const good = enc.encrypt('the tenant password', here);

    test('a flipped byte of the data', () => {
      expect(() => enc.decrypt(withPart(good, 4, flipFirstByte), here)).toThrow();
    });

    test('a flipped byte of the auth tag', () => {
      expect(() => enc.decrypt(withPart(good, 3, flipFirstByte), here)).toThrow();
    });

    test('a flipped byte of the IV', () => {
      expect(() => enc.decrypt(withPart(good, 2, flipFirstByte), here)).toThrow();
    });

    test('an auth tag cut short (GCM would otherwise accept 4 bytes)', () => {
      expect(() =>
        enc.decrypt(
          withPart(good, 3, (b) => b.subarray(0, 4)),
          here,
        ),
      ).toThrow();
      expect(() =>
        enc.decrypt(
          withPart(good, 3, (b) => b.subarray(0, 12)),
          here,
        ),
      ).toThrow();
    });

    test('a key id swapped for another configured id, even of the same key bytes (the id is authenticated)', () => {
      const bytes = randomBytes(32);
      const twins = new Encryptor([
        { id: 'a', key: bytes },
        { id: 'b', key: bytes },
      ]);
      const c = twins.encrypt('bound to key id a', here);
      expect(twins.decrypt(c, here)).toBe('bound to key id a');
      expect(() =>
        twins.decrypt(
          withPart(c, 1, () => 'b'),
          here,
        ),
      ).toThrow();
    });

    test('something that is not a ciphertext of this format', () => {
      expect(() => enc.decrypt('plain text', here)).toThrow(/format/);
      expect(() => enc.decrypt(good.replace(/^v2/, 'v3'), here)).toThrow(/format/);
      expect(() => enc.decrypt(`${good}.extra`, here)).toThrow(/format/);
    });
  });

  test('refuses a ciphertext whose key id is not configured, naming the id', () => {
    const c = new Encryptor([key('gone')]).encrypt('x', here);
    expect(() => new Encryptor([current, old]).decrypt(c, here)).toThrow(/no decryption key "gone"/);
  });

  test('refuses a ciphertext made with another key under the same id', () => {
    const c = new Encryptor([key('k1')]).encrypt('x', here);
    expect(() => new Encryptor([key('k1')]).decrypt(c, here)).toThrow();
  });

  test('after rotation, still decrypts what the old key encrypted and encrypts with the new key', () => {
    const before = new Encryptor([old]);
    const stored = before.encrypt('written before the rotation', here);

    const after = new Encryptor([current, old]);
    expect(after.decrypt(stored, here)).toBe('written before the rotation');

    const fresh = after.encrypt('written after the rotation', here);
    expect(fresh.split('.')[1]).toBe('new');
    expect(after.decrypt(fresh, here)).toBe('written after the rotation');
    // The old key alone cannot read what the new key wrote.
    expect(() => before.decrypt(fresh, here)).toThrow(/no decryption key "new"/);
  });

  test('needs at least one key, each with an id that fits the format', () => {
    expect(() => new Encryptor([])).toThrow(/at least one/);
    expect(() => new Encryptor([key('a.b')])).toThrow(/bad encryption key id "a.b"/);
    expect(() => new Encryptor([key('')])).toThrow(/bad encryption key id/);
  });

  describe('binds a ciphertext to the row and column it is stored in', () => {
    const enc = new Encryptor([current]);
    const credentialsOfA = enc.encryptJson(
      { user: 'store_a', password: 'a-secret' },
      secretContext.storeCredentials(storeA),
    );

    test("store A's credentials copied into store B's row do not decrypt", () => {
      expect(() => enc.decryptJson(credentialsOfA, secretContext.storeCredentials(storeB))).toThrow(DecryptionError);
      expect(enc.decryptJson(credentialsOfA, secretContext.storeCredentials(storeA))).toEqual({
        user: 'store_a',
        password: 'a-secret',
      });
    });

    test("store A's credentials copied into another column of store A do not decrypt", () => {
      expect(() => enc.decryptJson(credentialsOfA, secretContext.storeIntegration(storeA, 'stripe'))).toThrow(
        DecryptionError,
      );
      const stripeOfA = enc.encryptJson({ secretKey: 'sk_test_a' }, secretContext.storeIntegration(storeA, 'stripe'));
      expect(() => enc.decryptJson(stripeOfA, secretContext.storeCredentials(storeA))).toThrow(DecryptionError);
      expect(() => enc.decryptJson(stripeOfA, secretContext.storeIntegration(storeB, 'stripe'))).toThrow(
        DecryptionError,
      );
    });

    test('a v2 ciphertext relabelled v1 (to skip the row check) does not decrypt', () => {
      expect(() => enc.decrypt(credentialsOfA.replace(/^v2/, 'v1'), here)).toThrow(DecryptionError);
    });
  });

  describe('still reads v1 ciphertexts written before row binding', () => {
    test('decrypts them, under any of the configured keys, wherever they are stored', () => {
      const stored = legacyV1(old, JSON.stringify({ user: 'legacy', password: 'p' }));
      const enc = new Encryptor([current, old]);
      expect(enc.decryptJson(stored, secretContext.storeCredentials(storeA))).toEqual({
        user: 'legacy',
        password: 'p',
      });
      // v1 carries no place: it cannot be checked until the row is written again (as v2).
      expect(enc.decryptJson(stored, secretContext.storeCredentials(storeB))).toEqual({
        user: 'legacy',
        password: 'p',
      });
      expect(enc.encryptJson({ user: 'legacy', password: 'p' }, here)).toMatch(/^v2\.new\./);
    });

    test('still refuses a tampered v1 ciphertext', () => {
      const stored = legacyV1(current, 'legacy secret');
      const enc = new Encryptor([current]);
      expect(enc.decrypt(stored, here)).toBe('legacy secret');
      expect(() => enc.decrypt(withPart(stored, 4, flipFirstByte), here)).toThrow(DecryptionError);
    });
  });
});
