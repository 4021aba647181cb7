import { promises as dns } from 'node:dns';

/** The DNS name whose TXT record proves control of `hostname`. */
export const challengeName = (hostname: string) => `_tenantry-challenge.${hostname}`;

export type TxtLookup = { found: true; values: string[] } | { found: false; reason: string };

/** At most this many TXT values, each cut to this length, are kept (and shown back in an error). */
const MAX_VALUES = 10;
const MAX_VALUE_LENGTH = 200;

/**
 * Reads TXT records with Node's resolver, asking DNS_SERVERS when set (else the system's), with a short
 * timeout: a verification answers within a few seconds whatever the owner's DNS does.
 */
export class TxtResolver {
  private readonly resolver = new dns.Resolver({ timeout: 1500, tries: 2 });

  constructor(servers: readonly string[]) {
    if (servers.length) this.resolver.setServers([...servers]);
  }

  async lookup(name: string): Promise<TxtLookup> {
    try {
      const records = await this.resolver.resolveTxt(name);
      // A TXT record may come in several character-strings: together they are one value.
      return {
        found: true,
        values: records.slice(0, MAX_VALUES).map((chunks) => chunks.join('').slice(0, MAX_VALUE_LENGTH)),
      };
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? 'error';
      const reason =
        code === dns.NOTFOUND || code === dns.NODATA
          ? `no TXT record at ${name}`
          : code === dns.TIMEOUT || code === dns.CONNREFUSED
            ? `the DNS servers did not answer for ${name}; try again shortly`
            : `the DNS lookup of ${name} failed (${code})`;
      return { found: false, reason };
    }
  }
}
