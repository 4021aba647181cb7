import { OpenAPIRegistry, OpenApiGeneratorV31, extendZodWithOpenApi } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';

extendZodWithOpenApi(z);

/** Every route registers itself here (see ApiRouter), so the document is made from the same schemas the
 * code validates with. */
export const registry = new OpenAPIRegistry();

registry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' });

export const Problem = registry.register(
  'Problem',
  z
    .object({
      type: z.string().describe('Always about:blank: `code` says what went wrong'),
      title: z.string().describe("The status's reason phrase"),
      status: z.number().int(),
      code: z.string().describe('Stable, upper snake case: what clients switch on (listed with each response)'),
      detail: z.string().describe('For people: what went wrong and, where it helps, what to do'),
      errors: z
        .array(
          z.object({ path: z.string().describe('The field, dotted (`company.name`), or (root)'), message: z.string() }),
        )
        .optional()
        .describe('Only for VALIDATION_FAILED: every problem found'),
      runId: z.string().optional().describe('Only for MIGRATION_RUN_ACTIVE: the active fleet migration run'),
      resource: z
        .enum(['stores', 'products', 'staff', 'hostnames', 'storageMb'])
        .optional()
        .describe('Only for PLAN_LIMIT_REACHED: the limit reached'),
      limit: z.number().int().optional().describe('Only for PLAN_LIMIT_REACHED: what the plan allows'),
      count: z
        .number()
        .int()
        .optional()
        .describe('Only for PLAN_LIMIT_REACHED: how many there are now (megabytes for storageMb)'),
      over: z
        .array(
          z.object({
            resource: z.enum(['stores', 'products', 'staff', 'hostnames', 'storageMb']),
            limit: z.number().int(),
            count: z.number().int(),
            storeId: z.string().nullable().describe('The store over a per-store limit; null for stores'),
          }),
        )
        .optional()
        .describe('Only for PLAN_LIMIT_EXCEEDED: every limit of the plan asked for that current usage is over'),
    })
    .describe('An RFC 9457 problem'),
);

const DESCRIPTION = `Database-per-tenant backend of a multi-store commerce platform.

Errors are RFC 9457 problem JSON (\`application/problem+json\`) with a stable \`code\`. Every route refuses unknown
body fields and unknown query parameters (400 \`VALIDATION_FAILED\`); a method a path does not have answers 405
\`METHOD_NOT_ALLOWED\` with an \`Allow\` header. Lists take \`limit\` and \`cursor\` and answer
\`{ items, nextCursor }\`.`;

/**
 * A string trimmed before its length is checked. The document cannot trim, so it keeps the bounds on the
 * untrimmed length (stricter) and asks, by a pattern, for enough characters that are not blank: nothing it
 * accepts is refused for being blank after trimming.
 */
export const trimmedString = (min: 1 | 2, max: number) =>
  z
    .string()
    .trim()
    .min(min)
    .max(max)
    .openapi({ pattern: min === 1 ? '\\S' : '\\S[\\s\\S]*\\S' });

/**
 * `format: uuid` admits any 8-4-4-4-12 hex string; z.uuid() only RFC 9562 ones (a version and the variant
 * bits) and the nil and max UUIDs. Every uuid of the document gets the validator's own pattern, so that an id a
 * client's check accepts is never refused as malformed.
 */
function withUuidPatterns<T>(node: T): T {
  if (Array.isArray(node)) node.forEach(withUuidPatterns);
  else if (node && typeof node === 'object') {
    const schema = node as Record<string, unknown>;
    if (schema.format === 'uuid' && schema.pattern === undefined) schema.pattern = z.regexes.uuid().source;
    Object.values(schema).forEach(withUuidPatterns);
  }
  return node;
}

let cached: unknown;
/** The document served at /openapi.json (and written by \`npm run openapi\` for the generated client). */
export function openApiDocument(): unknown {
  cached ??= withUuidPatterns(
    new OpenApiGeneratorV31(registry.definitions).generateDocument({
      openapi: '3.1.0',
      info: {
        title: 'Tenantry API',
        version: '1.0.0',
        description: DESCRIPTION,
        // Not an open-source licence: the API and this document are the operator's.
        license: { name: 'Proprietary', identifier: 'LicenseRef-Proprietary' },
      },
      // Relative: the document describes the server that serves it, whatever its public name.
      servers: [{ url: '/', description: 'The server that serves this document' }],
      // The default of every operation; public ones say `security: []`.
      security: [{ bearer: [] }],
    }),
  );
  return cached;
}
