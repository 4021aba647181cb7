import type { AppContext } from '../app-context';
import { ApiRouter, WRONG_TOKEN } from '../http/api-router';
import { platformActorOf, requireAuth } from '../http/authenticate';
import { StoreIdParams } from '../http/schemas';
import { logger } from '../lib/logger';
import { ExportArchive, ExportHeaders } from './export.schemas';
import { ExportSlots, openExport, type ExportLimits } from './export.service';

/** How long a download may go without the client taking a byte before it is cut (ms). */
const STALLED_READER_MS = 60_000;

/**
 * GET /api/stores/:id/export (owner): the store's data streamed as a tar.gz (see export.service.ts for who
 * and when, store-archive.ts for the archive). Refusals are problem JSON; once the archive has started, a
 * failure can only cut the download short (the gzip then does not end: the client sees it as broken).
 */
export function exportRoutes(ctx: AppContext, limits?: ExportLimits): ApiRouter {
  const api = new ApiRouter('/api/stores', { securedErrors: { 403: WRONG_TOKEN } });
  const slots = new ExportSlots(limits);
  api.get(
    '/:id/export',
    {
      tags: ['stores'],
      secured: true,
      middleware: [requireAuth(ctx, 'platform')],
      operationId: 'exportStore',
      summary: "Download the store's data as a portable archive (owner)",
      description:
        'Streamed as it is read, from one consistent snapshot of the store database. One export per store at a ' +
        'time; a suspended store may be exported, a deleted one must be restored first.',
      params: StoreIdParams,
      download: {
        contentType: 'application/gzip',
        schema: ExportArchive,
        description: 'The archive, as an attachment',
        headers: ExportHeaders,
      },
      errors: {
        403: 'FORBIDDEN (not the owner)',
        404: 'STORE_NOT_FOUND',
        409: 'STORE_NOT_READY | CONFLICT (an export of this store is already running)',
        429: 'RATE_LIMITED (too many exports of your stores at once)',
        503: 'SERVICE_UNAVAILABLE (too many exports on this server) | TENANT_UNAVAILABLE',
      },
    },
    async ({ params, req, res }) => {
      const { userId, requestId } = platformActorOf(req);
      const started = await openExport(ctx, slots, { storeId: params.id, userId, requestId });
      const headers = {
        'Content-Type': 'application/gzip',
        'Content-Disposition': `attachment; filename="${started.fileName}"`,
        'Cache-Control': 'no-store',
      };
      if (req.method === 'HEAD') {
        // Express answers HEAD with the GET route: the checks, without reading the store.
        await started.close();
        res.status(200).set(headers).end();
        return;
      }
      const abort = new AbortController();
      let clientLeft = false;
      res.on('close', () => {
        if (res.writableFinished) return;
        clientLeft = true;
        abort.abort(new Error('the client closed the download'));
      });
      // A reader that takes nothing for this long is dropped: it would hold its slot and the spool files.
      res.setTimeout(STALLED_READER_MS, () => res.destroy());
      res.status(200).set(headers);
      try {
        await started.write(res, abort);
      } catch (err) {
        if (!clientLeft) logger.warn({ storeId: params.id, err: (err as Error).message }, 'export failed midway');
        res.destroy();
      } finally {
        res.setTimeout(0);
      }
    },
  );
  return api;
}
