import { Op, type Transaction } from 'sequelize';
import type { MasterModels } from '../models/master';
import type { EventBus } from '../lib/bus';

/**
 * Logged-out tokens. The master DB is the record (so a revocation survives restarts); every instance keeps
 * the unexpired ones in memory, so checking a token costs no query, and hears new ones over the bus.
 */
export class RevocationList {
  private readonly revoked = new Map<string, number>();
  private pruneTimer?: NodeJS.Timeout;

  constructor(
    private readonly models: MasterModels,
    private readonly bus: EventBus,
  ) {
    bus.on('token.revoked', (e) => this.revoked.set(e.jti, e.exp * 1000));
    bus.onReconnect(() => void this.load().catch(() => {}));
  }

  async load(): Promise<void> {
    const rows = await this.models.RevokedToken.findAll({
      where: { expiresAt: { [Op.gt]: new Date() } },
      attributes: ['jti', 'expiresAt'],
      raw: true,
    });
    for (const r of rows) this.revoked.set(r.jti, new Date(r.expiresAt).getTime());
    this.pruneTimer ??= setInterval(() => this.prune(), 60_000).unref();
  }

  isRevoked(jti: string): boolean {
    return this.revoked.has(jti);
  }

  /** `userId` is the platform account of a platform token; store tokens (tenant users) have none. */
  /** `record` runs in the revocation's transaction when this call revokes the token (not when it already was). */
  async revoke(
    jti: string,
    userId: string | null,
    exp: number,
    record?: (t: Transaction) => Promise<unknown>,
  ): Promise<void> {
    await this.models.RevokedToken.sequelize!.transaction(async (transaction) => {
      const [, created] = await this.models.RevokedToken.findOrCreate({
        where: { jti },
        defaults: { jti, userId, expiresAt: new Date(exp * 1000) },
        transaction,
      });
      if (created && record) await record(transaction);
    });
    await this.bus.publish({ type: 'token.revoked', jti, exp });
  }

  stop(): void {
    clearInterval(this.pruneTimer);
  }

  private prune(): void {
    const now = Date.now();
    for (const [jti, expMs] of this.revoked) if (expMs < now) this.revoked.delete(jti);
  }
}
