/**
 * `npm run openapi [file]`: writes the OpenAPI document the API serves at /openapi.json (by default to
 * clients/typescript/openapi.json), without a database, Redis or a listening server.
 *
 * Routes register themselves in the document when they are built (see ApiRouter). Building them needs a
 * context, but only to keep references for later requests: the one below holds the configuration and inert
 * stand-ins, and opens nothing. A route factory that starts to use its context while being built fails here
 * loudly rather than connecting; test/integration/openapi-client.test.ts checks that the served document is
 * this one, byte for byte.
 */
import './openapi-env';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { apiRouters } from '../src/app';
import { config } from '../src/config';
import { openApiDocument } from '../src/http/openapi';

export const CLIENT_DIR = path.resolve(__dirname, '../clients/typescript');
export const DOCUMENT_FILE = path.join(CLIENT_DIR, 'openapi.json');

/** The document as JSON text, the way the check and the client generator compare and read it. */
export const documentText = (document: unknown) => `${JSON.stringify(document, null, 2)}\n`;

export function buildOpenApiDocument(): unknown {
  const pending = () => new Promise<never>(() => {});
  const inert = {
    config,
    redisPrefix: 'openapi',
    // Rate limiters load their Redis script when built; the answer is never needed.
    redis: { call: pending },
    // Caches subscribe to invalidations when built.
    bus: { on() {}, onReconnect() {} },
  };
  apiRouters(inert as unknown as Parameters<typeof apiRouters>[0]);
  return openApiDocument();
}

if (require.main === module) {
  const file = path.resolve(process.argv[2] ?? DOCUMENT_FILE);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, documentText(buildOpenApiDocument()));
  console.log(`OpenAPI document written to ${path.relative(process.cwd(), file) || file}`);
}
