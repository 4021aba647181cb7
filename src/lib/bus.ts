import type { Redis } from 'ioredis';
import { logger } from './logger';

/** Messages every API instance must hear: caches that could go stale are dropped on them. */
export type BusEvent =
  | { type: 'token.revoked'; jti: string; exp: number }
  | { type: 'tenant.invalidate'; storeId: string }
  | { type: 'hostnames.changed'; hostnames: string[] }
  /** A store's database is being migrated (its requests wait), then is done (migrated or failed: they go on). */
  | { type: 'tenant.migrating'; storeId: string }
  | { type: 'tenant.migrated'; storeId: string }
  /** A platform role was granted or revoked (by the operator's command line): cached roles are dropped. */
  | { type: 'user.role.changed'; userId: string }
  /** An account's plan or subscription status changed (committed): cached limits of its stores are dropped. */
  | { type: 'plan.changed'; userId: string };

/** The pub/sub channel of one deployment (every process sharing a Redis prefix hears the same messages). */
export const busChannel = (redisPrefix: string): string => `${redisPrefix}:events`;

type Handler<T extends BusEvent['type']> = (event: Extract<BusEvent, { type: T }>) => void;

/** Redis pub/sub between instances. The subscriber needs a connection of its own. */
export class EventBus {
  private readonly handlers = new Map<string, Set<(e: BusEvent) => void>>();
  private readonly reconnectHandlers = new Set<() => void>();
  private subscribed = false;

  constructor(
    private readonly publisher: Redis,
    private readonly subscriber: Redis,
    readonly channel: string,
  ) {}

  async start(): Promise<void> {
    this.subscriber.on('message', (channel: string, message: string) => {
      if (channel !== this.channel) return;
      let event: BusEvent;
      try {
        event = JSON.parse(message) as BusEvent;
      } catch {
        return;
      }
      this.deliver(event);
    });
    // After a lost connection messages may have been missed: let caches resynchronise.
    this.subscriber.on('ready', () => {
      if (this.subscribed) for (const h of this.reconnectHandlers) h();
    });
    await this.subscriber.subscribe(this.channel);
    this.subscribed = true;
  }

  on<T extends BusEvent['type']>(type: T, handler: Handler<T>): void {
    let set = this.handlers.get(type);
    if (!set) this.handlers.set(type, (set = new Set()));
    set.add(handler as (e: BusEvent) => void);
  }

  onReconnect(handler: () => void): void {
    this.reconnectHandlers.add(handler);
  }

  /** Apply locally at once, then tell the other instances. */
  async publish(event: BusEvent): Promise<void> {
    this.deliver(event);
    await this.publisher.publish(this.channel, JSON.stringify(event));
  }

  private deliver(event: BusEvent): void {
    for (const h of this.handlers.get(event.type) ?? []) {
      try {
        h(event);
      } catch (err) {
        logger.error({ err, event: event.type }, 'bus handler failed');
      }
    }
  }
}
