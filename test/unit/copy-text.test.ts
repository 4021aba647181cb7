import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { CopyTextDecoder } from '../../src/exports/copy-text';

/** COPY's text format, decoded back to the column's bytes however the stream is cut into chunks. */
async function decode(chunks: Buffer[]): Promise<string> {
  return (await buffer(Readable.from(chunks).pipe(new CopyTextDecoder()))).toString('utf8');
}

const cases: [string, string][] = [
  ['{"a":"back\\\\\\\\slash"}\n', '{"a":"back\\\\slash"}\n'],
  ['tab\\there\\nnew\\rcr\\\\\n', 'tab\there\nnew\rcr\\\n'],
  ['\\b\\f\\v\n', '\b\f\v\n'],
  ['octal \\101\\7\\0601\n', 'octal A\x07' + '01\n'],
  ['hex \\x41\\x4g \\xg\n', 'hex A\x04g xg\n'],
  ['unicode é 中文 🎉 \\\\u00e9\n', 'unicode é 中文 🎉 \\u00e9\n'],
  ['other \\q\\"\n', 'other q"\n'],
];

describe('CopyTextDecoder', () => {
  test.each(cases)('decodes %j in one chunk and cut at every byte', async (input, expected) => {
    const bytes = Buffer.from(input, 'utf8');
    expect(await decode([bytes])).toBe(expected);
    for (let cut = 1; cut < bytes.length; cut++) {
      expect(await decode([bytes.subarray(0, cut), bytes.subarray(cut)])).toBe(expected);
    }
    expect(await decode([...bytes].map((b) => Buffer.from([b])))).toBe(expected);
  });

  test('an escape still open at the end of the data is decoded with the digits there are', async () => {
    expect(await decode([Buffer.from('a\\10')])).toBe('a\b');
    expect(await decode([Buffer.from('a\\x4')])).toBe('a\x04');
  });

  test('data that ends with a lone backslash is refused', async () => {
    await expect(decode([Buffer.from('a\\')])).rejects.toThrow(/ends inside an escape/);
  });
});
