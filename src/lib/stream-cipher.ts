import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { DecryptionError, type Encryptor } from './crypto';

/**
 * Streaming AES-256-GCM for archives too large to hold in memory: the plaintext is cut into chunks of
 * CHUNK_BYTES, each sealed on its own (its own nonce and 16-byte tag), so a reader checks each chunk before
 * passing it on and never needs the whole file.
 *
 *   header: "TNTSC1" | key id length (1 byte) | key id | nonce base (8 random bytes)
 *   chunk:  ciphertext length (4 bytes BE) | ciphertext | tag (16 bytes)
 *
 * The nonce of chunk i is the base followed by i (4 bytes BE): never reused under one key as long as the base
 * is random per stream. Each chunk's AAD holds the header (so the key id and base cannot be swapped), the
 * caller's context (what the stream is, e.g. which store's backup), the chunk index and a final-chunk flag: a
 * reordered, dropped, duplicated or truncated chunk — or a stream cut short before its final chunk — fails.
 */
const MAGIC = Buffer.from('TNTSC1');
const CHUNK_BYTES = 64 * 1024;
const TAG_BYTES = 16;
const BASE_BYTES = 8;
/** A chunk's ciphertext is never larger than this; a length field above it is corruption, not a huge read. */
const MAX_CHUNK = CHUNK_BYTES;

function nonce(base: Buffer, index: number): Buffer {
  const n = Buffer.alloc(12);
  base.copy(n, 0);
  n.writeUInt32BE(index, 8);
  return n;
}

function aad(header: Buffer, context: string, index: number, final: boolean): Buffer {
  const tail = Buffer.alloc(5);
  tail.writeUInt32BE(index, 0);
  tail[4] = final ? 1 : 0;
  return Buffer.concat([header, Buffer.from(`\0${context}\0`), tail]);
}

/** Encrypt a stream under the encryptor's current key. `context` must be given again to decrypt. */
export function encryptStream(encryptor: Encryptor, context: string): Transform {
  const { id, key } = encryptor.currentKey();
  const idBytes = Buffer.from(id);
  const base = randomBytes(BASE_BYTES);
  const header = Buffer.concat([MAGIC, Buffer.from([idBytes.length]), idBytes, base]);
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let index = 0;

  const seal = (plain: Buffer, final: boolean): Buffer => {
    const cipher = createCipheriv('aes-256-gcm', key, nonce(base, index), { authTagLength: TAG_BYTES });
    cipher.setAAD(aad(header, context, index, final));
    const data = Buffer.concat([cipher.update(plain), cipher.final()]);
    index++;
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length, 0);
    return Buffer.concat([len, data, cipher.getAuthTag()]);
  };

  return new Transform({
    construct(callback) {
      this.push(header);
      callback();
    },
    transform(chunk: Buffer, _enc, callback: TransformCallback) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      // Keep one full chunk back: only at the end is it known which chunk is the final one.
      while (pendingBytes > CHUNK_BYTES) {
        const all = Buffer.concat(pending);
        this.push(seal(all.subarray(0, CHUNK_BYTES), false));
        const rest = all.subarray(CHUNK_BYTES);
        pending = [rest];
        pendingBytes = rest.length;
      }
      callback();
    },
    flush(callback: TransformCallback) {
      this.push(seal(Buffer.concat(pending), true));
      pending = [];
      callback();
    },
  });
}

/**
 * Decrypt what encryptStream wrote, with whichever listed key its header names. Fails with DecryptionError
 * (the stream errors) on an unknown key, a chunk that does not authenticate, or a stream without its final
 * chunk or with bytes after it. Chunks are passed on only once authenticated.
 */
export function decryptStream(encryptor: Encryptor, context: string): Transform {
  let buf: Buffer = Buffer.alloc(0);
  let header: Buffer | null = null;
  let key: Buffer | undefined;
  let base: Buffer;
  let index = 0;
  let ended = false;

  const step = (t: Transform): void => {
    if (!header) {
      if (buf.length < MAGIC.length + 1) return;
      if (!buf.subarray(0, MAGIC.length).equals(MAGIC))
        throw new DecryptionError('not an encrypted stream of this format');
      const idLen = buf[MAGIC.length];
      const headerLen = MAGIC.length + 1 + idLen + BASE_BYTES;
      if (buf.length < headerLen) return;
      const id = buf.subarray(MAGIC.length + 1, MAGIC.length + 1 + idLen).toString();
      key = encryptor.keyById(id);
      if (!key) throw new DecryptionError(`no decryption key "${id}" is configured`);
      header = Buffer.from(buf.subarray(0, headerLen));
      base = header.subarray(headerLen - BASE_BYTES);
      buf = buf.subarray(headerLen);
    }
    while (buf.length >= 4) {
      if (ended) throw new DecryptionError('bytes after the final chunk');
      const len = buf.readUInt32BE(0);
      if (len > MAX_CHUNK) throw new DecryptionError('a chunk length is out of range (corrupted)');
      if (buf.length < 4 + len + TAG_BYTES) return;
      const data = buf.subarray(4, 4 + len);
      const tag = buf.subarray(4 + len, 4 + len + TAG_BYTES);
      buf = buf.subarray(4 + len + TAG_BYTES);
      // Only a short chunk can be the final one; a full one is tried as non-final first.
      const tryOpen = (final: boolean): Buffer | null => {
        const decipher = createDecipheriv('aes-256-gcm', key!, nonce(base, index), { authTagLength: TAG_BYTES });
        decipher.setAAD(aad(header!, context, index, final));
        decipher.setAuthTag(tag);
        try {
          return Buffer.concat([decipher.update(data), decipher.final()]);
        } catch {
          return null;
        }
      };
      let plain = tryOpen(false);
      if (!plain) {
        plain = tryOpen(true);
        if (!plain)
          throw new DecryptionError(`chunk ${index} does not authenticate (tampered with, reordered or another key)`);
        ended = true;
      }
      index++;
      if (plain.length) t.push(plain);
    }
  };

  return new Transform({
    transform(chunk: Buffer, _enc, callback: TransformCallback) {
      buf = buf.length ? Buffer.concat([buf, chunk]) : chunk;
      try {
        step(this);
        callback();
      } catch (err) {
        callback(err as Error);
      }
    },
    flush(callback: TransformCallback) {
      if (!ended || buf.length) callback(new DecryptionError('the stream ends before its final chunk (truncated)'));
      else callback();
    },
  });
}
