import { Transform, type TransformCallback } from 'node:stream';

const BACKSLASH = 0x5c;
/** The one-letter escapes of COPY's text format (https://www.postgresql.org/docs/current/sql-copy.html). */
const LETTERS: Record<number, number> = {
  0x62: 0x08, // \b
  0x66: 0x0c, // \f
  0x6e: 0x0a, // \n
  0x72: 0x0d, // \r
  0x74: 0x09, // \t
  0x76: 0x0b, // \v
};
const isOctal = (b: number) => b >= 0x30 && b <= 0x37;
const hexValue = (b: number) =>
  b >= 0x30 && b <= 0x39 ? b - 0x30 : b >= 0x41 && b <= 0x46 ? b - 0x37 : b >= 0x61 && b <= 0x66 ? b - 0x57 : -1;

/**
 * Decodes the output of `COPY (SELECT <one column>) TO STDOUT` in text format back to the column's own bytes,
 * one value per line: COPY escapes backslashes and control characters (`\\`, `\n`, `\t`, octal `\123`, hex
 * `\x1f`…), and a JSON line written by `row_to_json` holds backslashes of its own (`"a\\b"`, `"\n"`), doubled
 * by COPY. Line ends (the row separator, a raw newline) pass through. An escape cut by a chunk boundary is
 * kept for the next chunk. Only for single-column output: a raw tab (a column separator) is left as it is.
 */
export class CopyTextDecoder extends Transform {
  private carry: Buffer | null = null;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    const input = this.carry ? Buffer.concat([this.carry, chunk]) : chunk;
    const { out, used } = decode(input, false);
    this.carry = used < input.length ? Buffer.from(input.subarray(used)) : null;
    done(null, out.length ? out : undefined);
  }

  override _flush(done: TransformCallback): void {
    // The end of the data: an escape still waiting for more digits is decoded with the digits there are.
    const carry = this.carry;
    this.carry = null;
    if (!carry) return done();
    const { out, used } = decode(carry, true);
    if (used < carry.length) return done(new Error('COPY data ends inside an escape'));
    done(null, out);
  }
}

/** Decode `input`; unless `final`, stop before an escape that may continue in the next chunk. */
function decode(input: Buffer, final: boolean): { out: Buffer; used: number } {
  const out = Buffer.allocUnsafe(input.length);
  let n = 0;
  let i = 0;
  while (i < input.length) {
    const b = input[i];
    if (b !== BACKSLASH) {
      out[n++] = b;
      i++;
      continue;
    }
    if (i + 1 >= input.length) break; // a lone backslash: its escape comes next
    const c = input[i + 1];
    if (isOctal(c)) {
      // One to three octal digits.
      let len = 1;
      while (len < 3 && i + 1 + len < input.length && isOctal(input[i + 1 + len])) len++;
      if (!final && len < 3 && i + 1 + len >= input.length) break;
      out[n++] = parseInt(input.toString('latin1', i + 1, i + 1 + len), 8) & 0xff;
      i += 1 + len;
    } else if (c === 0x78 /* x */) {
      // One or two hex digits; `\x` without one is an `x`.
      if (!final && i + 3 >= input.length) break;
      const h1 = i + 2 < input.length ? hexValue(input[i + 2]) : -1;
      const h2 = h1 >= 0 && i + 3 < input.length ? hexValue(input[i + 3]) : -1;
      if (h1 < 0) {
        out[n++] = c;
        i += 2;
      } else if (h2 < 0) {
        out[n++] = h1;
        i += 3;
      } else {
        out[n++] = h1 * 16 + h2;
        i += 4;
      }
    } else {
      out[n++] = LETTERS[c] ?? c; // `\\` is a backslash; any other escaped character stands for itself
      i += 2;
    }
  }
  return { out: out.subarray(0, n), used: i };
}
