import { randomBytes } from 'node:crypto';
import { Readable, Writable, type Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { DecryptionError, Encryptor } from '../../src/lib/crypto';
import { decryptStream, encryptStream } from '../../src/lib/stream-cipher';

const oldKey = { id: 'old', key: randomBytes(32) };
const newKey = { id: 'new', key: randomBytes(32) };

async function collect(source: Buffer, transform: Transform): Promise<Buffer> {
  const out: Buffer[] = [];
  await pipeline(
    Readable.from([source]),
    transform,
    new Writable({
      write(chunk: Buffer, _enc, done) {
        out.push(chunk);
        done();
      },
    }),
  );
  return Buffer.concat(out);
}

const seal = (e: Encryptor, plain: Buffer, context = 'ctx') => collect(plain, encryptStream(e, context));
const open = (e: Encryptor, sealed: Buffer, context = 'ctx') => collect(sealed, decryptStream(e, context));

describe('stream cipher', () => {
  const e = new Encryptor([oldKey]);
  const plain = randomBytes(200_000); // four chunks, the last one short

  it('round-trips a stream of several chunks, and an empty one', async () => {
    expect((await open(e, await seal(e, plain))).equals(plain)).toBe(true);
    expect((await open(e, await seal(e, Buffer.alloc(0)))).length).toBe(0);
  });

  it('refuses a flipped byte, a truncated stream, another context and appended bytes', async () => {
    const sealed = await seal(e, plain);
    const flipped = Buffer.from(sealed);
    flipped[100_000] ^= 1;
    await expect(open(e, flipped)).rejects.toThrow(DecryptionError);
    // cut after the first full chunk: every chunk left authenticates, but the final one is missing
    const firstChunkEnd = 6 + 1 + 3 + 8 + 4 + 65536 + 16;
    await expect(open(e, sealed.subarray(0, firstChunkEnd))).rejects.toThrow(/truncated/);
    await expect(open(e, sealed, 'other')).rejects.toThrow(DecryptionError);
    await expect(open(e, Buffer.concat([sealed, sealed.subarray(-30)]))).rejects.toThrow(DecryptionError);
  });

  it('decrypts under a rotated key list that still holds the old key, not without it', async () => {
    const sealed = await seal(e, plain);
    expect((await open(new Encryptor([newKey, oldKey]), sealed)).equals(plain)).toBe(true);
    await expect(open(new Encryptor([newKey]), sealed)).rejects.toThrow(/no decryption key "old"/);
  });
});
