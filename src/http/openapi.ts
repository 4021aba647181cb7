import { OpenAPIRegistry, OpenApiGeneratorV31, extendZodWithOpenApi } from '@asteasolutions/zod-to-openapi';
import { z } from 'zod';

extendZodWithOpenApi(z);

/** Every route registers itself here (see ApiRouter), so the document is made from the same schemas the
 * code validates with. */
export const registry = new OpenAPIRegistry();

registry.registerComponent('securitySchemes', 'bearer', { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' });

export const Problem = registry.register(
  'Problem',
  z.object({
    type: z.string(),
    title: z.string(),
    status: z.number().int(),
    code: z.string(),
    detail: z.string(),
    errors: z.array(z.object({ path: z.string(), message: z.string() })).optional(),
  }),
);

let cached: unknown;
export function openApiDocument(): unknown {
  cached ??= new OpenApiGeneratorV31(registry.definitions).generateDocument({
    openapi: '3.1.0',
    info: {
      title: 'Tenantry API',
      version: '1.0.0',
      description: 'Database-per-tenant backend of a multi-store commerce platform.',
    },
  });
  return cached;
}
