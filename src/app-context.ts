import type { Redis } from 'ioredis';
import type { BatchedCounter } from './lib/batched-counter';
import type { Config } from './config';
import type { ConnectionManager } from './db/connection-manager';
import type { MasterDb } from './db/master';
import type { RevocationList } from './db/revocations';
import type { AdminPools } from './db/tenant-server-admin';
import type { EventBus } from './lib/bus';
import type { Encryptor } from './lib/crypto';
import type { TokenSigner } from './lib/jwt';
import type { Queues } from './queue/queues';

/** Everything a request handler or a job needs, built once per process and passed down explicitly. */
export interface AppContext {
  config: Config;
  masterUrl: string;
  master: MasterDb;
  redis: Redis;
  bus: EventBus;
  tokens: TokenSigner;
  encryptor: Encryptor;
  revocations: RevocationList;
  /** The only owner of tenant database handles. */
  tenants: ConnectionManager;
  /** Pooled admin connections to the tenant servers (provisioning's role and database statements). */
  adminPools: AdminPools;
  /** Producer handles of the queues, closed with the context. */
  queues: Queues;
  /** Prefix of every Redis key this process writes (rate limits, queues), so test runs cannot collide. */
  redisPrefix: string;
  /** Per-store request counts, added to Redis once a second (see usage/request-counter). */
  requestCounts: BatchedCounter;
  close(): Promise<void>;
}
