import net from 'node:net';
import { domainToASCII } from 'node:url';

/**
 * What a store may claim as a hostname. A Host header is attacker-chosen, and a hostname that routes
 * decides whose catalogue a request sees: names that are not plainly one party's DNS name (IP literals in
 * any spelling, localhost, single labels) or that belong to the platform are never claimable.
 */
export interface HostnamePolicy {
  /** Stores get `<slug>.<storeDomain>` from the platform; nobody claims a name under it. */
  storeDomain: string;
  /** The API's own public names: neither they nor their subdomains. */
  platform: readonly string[];
}

export type HostnameVerdict = { ok: true; hostname: string } | { ok: false; reason: 'invalid' | 'not_allowed'; detail: string };

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/;

/** Lower case, no port, no trailing dot; IPv6 brackets kept so the literal is still recognised as one. */
export function normaliseHostname(raw: string): string {
  let h = raw.trim().toLowerCase();
  const bracketed = /^(\[[^\]]*\])(:\d{1,5})?$/.exec(h);
  if (bracketed) return bracketed[1];
  // One colon: a port. More: an IPv6 literal written bare, left whole.
  if (h.split(':').length === 2) h = h.replace(/:\d{0,5}$/, '');
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

/**
 * Whether a name is an IP address in any spelling a resolver or URL parser accepts: dotted, bracketed or
 * bare IPv6, and the numeric forms 2130706433, 0x7f000001, 0177.0.0.1 or 127.1 (WHATWG URL treats a host
 * whose last label is a number as IPv4).
 */
export function isIpLiteral(h: string): boolean {
  const bare = h.startsWith('[') && h.endsWith(']') ? h.slice(1, -1) : h;
  if (net.isIP(bare)) return true;
  const labels = h.split('.').filter(Boolean);
  const last = labels[labels.length - 1] ?? '';
  return /^(\d+|0x[0-9a-f]*)$/i.test(last);
}

const isUnder = (h: string, domain: string) => h === domain || h.endsWith(`.${domain}`);

/** Check a hostname a store wants to claim: normalised, a valid multi-label DNS name, not reserved. */
export function checkClaimableHostname(raw: string, policy: HostnamePolicy): HostnameVerdict {
  const h = normaliseHostname(raw);
  if (isIpLiteral(h)) return { ok: false, reason: 'not_allowed', detail: 'IP addresses cannot be store hostnames; use a DNS name' };
  // Internationalised names are stored as their ASCII (punycode) form, which is what a Host header carries.
  const ascii = /^[\x21-\x7e]*$/.test(h) ? h : domainToASCII(h);
  if (!ascii || !/^[a-z0-9.-]+$/.test(ascii)) return { ok: false, reason: 'invalid', detail: 'must be a DNS name such as shop.example.com (no scheme, port or path)' };
  if (!ascii.includes('.') || isUnder(ascii, 'localhost')) {
    return { ok: false, reason: 'not_allowed', detail: 'localhost and single-label names cannot be store hostnames' };
  }
  if (!DNS_NAME.test(ascii)) return { ok: false, reason: 'invalid', detail: 'must be a DNS name such as shop.example.com (labels of 1–63 letters, digits and inner hyphens)' };
  if (isIpLiteral(ascii)) return { ok: false, reason: 'not_allowed', detail: 'IP addresses cannot be store hostnames; use a DNS name' };
  if (policy.platform.some((p) => isUnder(ascii, p))) return { ok: false, reason: 'not_allowed', detail: "the platform's own hostnames and their subdomains cannot be claimed" };
  if (isUnder(ascii, policy.storeDomain)) {
    return { ok: false, reason: 'not_allowed', detail: `names under ${policy.storeDomain} are issued by the platform (every store has <slug>.${policy.storeDomain})` };
  }
  return { ok: true, hostname: ascii };
}

/**
 * Whether a request's Host may pick the store: never an IP address (any spelling) or one of the
 * platform's own names — those reach the API itself, and the store comes from the header or the token.
 */
export function routableHost(hostname: string | undefined, policy: HostnamePolicy): string | undefined {
  if (!hostname) return undefined;
  const h = normaliseHostname(hostname);
  // A single label (localhost, an intranet name) is never a store's: no look-up for it.
  if (!h.includes('.') || isIpLiteral(h) || policy.platform.includes(h)) return undefined;
  return h;
}

/** The hostname the platform issues to a store. */
export const platformHostname = (slug: string, policy: Pick<HostnamePolicy, 'storeDomain'>) => `${slug}.${policy.storeDomain}`;
