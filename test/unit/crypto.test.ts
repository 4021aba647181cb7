import { randomBytes } from 'node:crypto';
import { Encryptor } from '../../src/lib/crypto';

const key = (id: string) => ({ id, key: randomBytes(32) });

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
    expect(enc.decrypt(enc.encrypt(secret))).toBe(secret);
    const value = { host: 'db', port: 5432, password: 's3cret', ssl: true };
    expect(enc.decryptJson(enc.encryptJson(value))).toEqual(value);
    expect(enc.decrypt(enc.encrypt(''))).toBe('');
  });

  test('never shows the plaintext and writes v1.<keyId>.<iv>.<tag>.<data>', () => {
    const enc = new Encryptor([current]);
    const c = enc.encrypt('super-secret-password');
    expect(c).not.toContain('super-secret-password');
    const [version, id, iv, tag] = c.split('.');
    expect(version).toBe('v1');
    expect(id).toBe('new');
    expect(Buffer.from(iv, 'base64url')).toHaveLength(12);
    expect(Buffer.from(tag, 'base64url')).toHaveLength(16);
  });

  test('gives a different ciphertext every time (random IV)', () => {
    const enc = new Encryptor([current]);
    const seen = new Set(Array.from({ length: 50 }, () => enc.encrypt('same text')));
    expect(seen.size).toBe(50);
    const ivs = new Set([...seen].map((c) => c.split('.')[2]));
    expect(ivs.size).toBe(50);
  });

  describe('refuses a tampered ciphertext', () => {
    const enc = new Encryptor([current]);
    const good = enc.encrypt('the tenant password');

    test('a flipped byte of the data', () => {
      expect(() => enc.decrypt(withPart(good, 4, flipFirstByte))).toThrow();
    });

    test('a flipped byte of the auth tag', () => {
      expect(() => enc.decrypt(withPart(good, 3, flipFirstByte))).toThrow();
    });

    test('a flipped byte of the IV', () => {
      expect(() => enc.decrypt(withPart(good, 2, flipFirstByte))).toThrow();
    });

    test('an auth tag cut short (GCM would otherwise accept 4 bytes)', () => {
      expect(() => enc.decrypt(withPart(good, 3, (b) => b.subarray(0, 4)))).toThrow();
      expect(() => enc.decrypt(withPart(good, 3, (b) => b.subarray(0, 12)))).toThrow();
    });

    test('a key id swapped for another configured id, even of the same key bytes (the id is authenticated)', () => {
      const bytes = randomBytes(32);
      const twins = new Encryptor([
        { id: 'a', key: bytes },
        { id: 'b', key: bytes },
      ]);
      const c = twins.encrypt('bound to key id a');
      expect(twins.decrypt(c)).toBe('bound to key id a');
      expect(() => twins.decrypt(withPart(c, 1, () => 'b'))).toThrow();
    });

    test('something that is not a ciphertext of this format', () => {
      expect(() => enc.decrypt('plain text')).toThrow(/format/);
      expect(() => enc.decrypt(good.replace(/^v1/, 'v2'))).toThrow(/format/);
      expect(() => enc.decrypt(`${good}.extra`)).toThrow(/format/);
    });
  });

  test('refuses a ciphertext whose key id is not configured, naming the id', () => {
    const c = new Encryptor([key('gone')]).encrypt('x');
    expect(() => new Encryptor([current, old]).decrypt(c)).toThrow(/no decryption key "gone"/);
  });

  test('refuses a ciphertext made with another key under the same id', () => {
    const c = new Encryptor([key('k1')]).encrypt('x');
    expect(() => new Encryptor([key('k1')]).decrypt(c)).toThrow();
  });

  test('after rotation, still decrypts what the old key encrypted and encrypts with the new key', () => {
    const before = new Encryptor([old]);
    const stored = before.encrypt('written before the rotation');

    const after = new Encryptor([current, old]);
    expect(after.decrypt(stored)).toBe('written before the rotation');

    const fresh = after.encrypt('written after the rotation');
    expect(fresh.split('.')[1]).toBe('new');
    expect(after.decrypt(fresh)).toBe('written after the rotation');
    // The old key alone cannot read what the new key wrote.
    expect(() => before.decrypt(fresh)).toThrow(/no decryption key "new"/);
  });

  test('needs at least one key', () => {
    expect(() => new Encryptor([])).toThrow(/at least one/);
  });
});
