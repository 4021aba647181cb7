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

export type HostnameVerdict =
  { ok: true; hostname: string } | { ok: false; reason: 'invalid' | 'not_allowed'; detail: string };

const DNS_NAME = /^(?=.{1,253}$)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$/;

/**
 * Lower case, no port, no trailing dot, internationalised names in their ASCII (punycode) form — what a Host
 * header carries and what is stored, so a claim, its verification, its removal and routing all see one
 * spelling. IPv6 brackets are kept so the literal is still recognised as one.
 */
export function normaliseHostname(raw: string): string {
  let h = raw.trim().toLowerCase();
  const bracketed = /^(\[[^\]]*\])(:\d{1,5})?$/.exec(h);
  if (bracketed) return bracketed[1];
  // One colon: a port. More: an IPv6 literal written bare, left whole.
  if (h.split(':').length === 2) h = h.replace(/:\d{0,5}$/, '');
  if (h.endsWith('.')) h = h.slice(0, -1);
  // An invalid name has no ASCII form ('' from domainToASCII): kept as sent, so validation names it.
  return /^[\x00-\x7f]*$/.test(h) ? h : domainToASCII(h) || h;
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
  if (isIpLiteral(h))
    return { ok: false, reason: 'not_allowed', detail: 'IP addresses cannot be store hostnames; use a DNS name' };
  if (!/^[a-z0-9.-]+$/.test(h))
    return {
      ok: false,
      reason: 'invalid',
      detail: 'must be a DNS name such as shop.example.com (no scheme, port or path)',
    };
  if (!h.includes('.') || isUnder(h, 'localhost')) {
    return { ok: false, reason: 'not_allowed', detail: 'localhost and single-label names cannot be store hostnames' };
  }
  if (!DNS_NAME.test(h))
    return {
      ok: false,
      reason: 'invalid',
      detail: 'must be a DNS name such as shop.example.com (labels of 1–63 letters, digits and inner hyphens)',
    };
  if (policy.platform.some((p) => isUnder(h, p)))
    return {
      ok: false,
      reason: 'not_allowed',
      detail: "the platform's own hostnames and their subdomains cannot be claimed",
    };
  if (isUnder(h, policy.storeDomain)) {
    return {
      ok: false,
      reason: 'not_allowed',
      detail: `names under ${policy.storeDomain} are issued by the platform (every store has <slug>.${policy.storeDomain})`,
    };
  }
  return { ok: true, hostname: h };
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
export const platformHostname = (slug: string, policy: Pick<HostnamePolicy, 'storeDomain'>) =>
  `${slug}.${policy.storeDomain}`;
