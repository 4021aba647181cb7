import { z } from 'zod';

/** The archive, as the document describes it (the bytes are streamed, never validated). */
export const ExportArchive = z.string().openapi({
  format: 'binary',
  description:
    'A gzip-compressed tar: `tables/<table>.ndjson` per table of the store database (one JSON object per row, ' +
    'primary-key order; bigint, numeric and bytea values as strings, timestamps ISO 8601 UTC) and, last, ' +
    '`manifest.json` `{ format, formatVersion, storeId, schemaVersion, exportedAt, tables: [{ name, file, ' +
    'columns, rows, bytes, sha256 }] }`',
});

export const ExportHeaders = z.object({
  'Content-Disposition': z
    .string()
    .openapi({ example: 'attachment; filename="my-shop-export-20261130T191200Z.tar.gz"' }),
});
