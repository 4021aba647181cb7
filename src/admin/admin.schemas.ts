import { z } from 'zod';
import { registry } from '../http/openapi';

const count = z.number().int().min(0);

/** One Postgres server as this process sees it: its budget, the leases, what is open and what was refused. */
const ServerPool = registry.register(
  'ServerPool',
  z
    .object({
      key: z.string().describe('host:port of the server'),
      external: z.boolean().describe("an owner's own server (budget EXTERNAL_SERVER_CONNECTIONS), not a managed one"),
      budget: count.describe(
        'connections every process together may hold there (max_connections − reserved slots − headroom)',
      ),
      mode: z
        .enum(['leased', 'static', 'local'])
        .describe('leased: through Redis; static: Redis unreachable, the last known budget ÷ processes'),
      leased: count.describe("this process's lease"),
      allowance: count.describe(
        'what this process may open now (below its lease while it gives back to a process that is short)',
      ),
      leasedTotal: count.describe("every process's leases together, as of the last heartbeat"),
      instances: count.describe('processes holding or wanting connections there'),
      demandTotal: count.describe('connections every process together wants (open + waiting)'),
      borrowed: count,
      returned: count,
      syncFailures: count.describe('lease calls Redis did not answer in time'),
      max: count.describe("this process's local cap now (its allowance, at most TENANT_CONNECTIONS_MAX)"),
      open: count,
      peak: count,
      waiting: count,
      waits: count,
      waitTimeouts: count,
      serverRefusals: count.describe('new sessions the server refused as full (53300), retried'),
      busyRefusals: count.describe('requests answered 503 busy for this server'),
    })
    .openapi({ description: 'One Postgres server as this process sees it' }),
);

const OwnerUsage = z.object({ ownerId: z.string(), open: count, peak: count, waiting: count });
const StorePool = z.object({
  storeId: z.string(),
  ownerId: z.string(),
  open: count,
  inUse: count,
  idle: count,
  waiting: count,
  leases: count,
  lastUsed: z.string(),
});

/** GET /api/admin/pools: the connection manager of the process that answered. */
export const PoolStats = registry.register(
  'PoolStats',
  z.object({
    instanceId: z.string().describe('the process that answered (its id among the lease holders)'),
    handles: count,
    handlesMax: count,
    connections: z.object({
      open: count,
      max: count.describe('TENANT_CONNECTIONS_MAX: most connections this process opens on one server'),
      peak: count,
      waiting: count,
      waits: count,
      avgWaitMs: z.number(),
      waitTimeouts: count,
      reclaimed: count,
      ownerMax: count,
      perOwner: z.array(OwnerUsage),
    }),
    servers: z.array(ServerPool),
    hits: count,
    misses: count,
    evictions: count,
    builds: count,
    avgBuildMs: z.number(),
    hostCache: z.object({ size: count, hits: count, misses: count, lookupsRefused: count }),
    fenced: z.array(z.object({ storeId: z.string(), until: z.string(), reason: z.string() })),
    fencesTotal: count,
    perStore: z.array(StorePool),
  }),
);
