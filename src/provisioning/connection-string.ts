import net from 'node:net';

/**
 * An owner's connection string, read as data. The usual parsers (pg-connection-string, libpq) take many of
 * its parameters as instructions: read this file (sslrootcert, sslcert, sslkey), connect through that Unix
 * socket (host=/var/run/postgresql), send these server options. For a string typed by a stranger that means
 * reading the platform's files and reaching its sockets, so this parser knows the URL's own parts and
 * `sslmode`, and refuses everything else.
 */

export const SSL_MODES = ['disable', 'require', 'verify-full'] as const;
export type SslMode = (typeof SSL_MODES)[number];

export interface OwnerConnection {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
  sslmode: SslMode;
}

export type ParsedConnectionString = { ok: true; connection: OwnerConnection } | { ok: false; reason: string };

const DEFAULT_PORT = 5432;
/** Postgres truncates longer names (NAMEDATALEN); the host/port form has the same bounds. */
const MAX_NAME = 63;
const MAX_PASSWORD = 1000;

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;
export const hasControlCharacters = (text: string): boolean => CONTROL.test(text);

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/i;
/** Decimal, hex or octal parts: what inet_aton reads as an IPv4 address (127.1, 0x7f000001, 2130706433). */
const NUMBER_LIKE = /^(?:0x[0-9a-f]*|[0-9]+)$/i;

/**
 * The host to connect to — a DNS name, a dotted-quad IPv4 address or an IPv6 address, given bracketed
 * (`[::1]`, or bare where `bareIpv6` allows it) and returned bare — or undefined for anything else: empty
 * (a Unix socket), a path, several hosts, an IPv4 address in another notation, a zone id.
 */
export function readHost(host: string, { bareIpv6 = false } = {}): string | undefined {
  if (host.startsWith('[') && host.endsWith(']')) {
    const inner = host.slice(1, -1);
    return net.isIPv6(inner) && !inner.includes('%') ? inner : undefined;
  }
  if (bareIpv6 && host.includes(':')) return net.isIPv6(host) && !host.includes('%') ? host : undefined;
  if (net.isIPv4(host)) return host;
  const name = host.endsWith('.') ? host.slice(0, -1) : host;
  if (name.length === 0 || name.length > 253) return undefined;
  const labels = name.split('.');
  if (!labels.every((l) => LABEL.test(l))) return undefined;
  if (labels.every((l) => NUMBER_LIKE.test(l))) return undefined;
  return host;
}

const decode = (text: string): string | undefined => {
  try {
    return decodeURIComponent(text);
  } catch {
    return undefined;
  }
};

const refuse = (reason: string): ParsedConnectionString => ({ ok: false, reason });

/**
 * Read `postgres://user:password@host:port/database?sslmode=…` (or `postgresql://`). User, password and
 * database are percent-decoded; the port defaults to 5432 and sslmode to `disable`.
 */
export function parseConnectionString(text: string): ParsedConnectionString {
  // Before the URL parser, which silently drops tabs and newlines.
  if (hasControlCharacters(text)) return refuse('must not contain control characters');
  // Unencoded, '#' can only start a fragment; one written into a password must be sent as %23.
  if (text.includes('#')) return refuse('must not have a fragment (#…); write a # in a password as %23');
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return refuse('is not a valid URL (scheme://user:password@host:port/database)');
  }
  if (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:')
    return refuse('must use the scheme postgres or postgresql');
  if (!url.hostname) return refuse('must name a host (Unix sockets are not supported)');
  const host = readHost(url.hostname);
  if (!host) return refuse('must name one host: a DNS name, an IPv4 address (a.b.c.d) or an IPv6 address in brackets');
  const port = url.port === '' ? DEFAULT_PORT : Number(url.port);
  if (!Number.isInteger(port) || port < 1 || port > 65535) return refuse('must have a port between 1 and 65535');

  const user = decode(url.username);
  const password = decode(url.password);
  const path = /^\/([^/]*)$/.exec(url.pathname);
  const database = path ? decode(path[1]) : '';
  if (user === undefined || password === undefined || database === undefined)
    return refuse('has a malformed percent-encoding');
  if ([user, password, database].some(hasControlCharacters))
    return refuse('must not contain control characters, encoded or not');
  if (!user) return refuse('must name a user');
  if (user.length > MAX_NAME) return refuse(`must have a user of at most ${MAX_NAME} characters`);
  if (password.length > MAX_PASSWORD) return refuse(`must have a password of at most ${MAX_PASSWORD} characters`);
  if (!path) return refuse('must have exactly one database name as its path: /database');
  if (!database) return refuse('must name a database');
  if (database.length > MAX_NAME) return refuse(`must have a database name of at most ${MAX_NAME} characters`);

  const params = [...url.searchParams];
  if (params.some(([key, value]) => hasControlCharacters(key) || hasControlCharacters(value)))
    return refuse('must not contain control characters, encoded or not');
  const other = params.find(([key]) => key !== 'sslmode');
  if (other) return refuse(`may have no parameter but sslmode (found ${JSON.stringify(other[0].slice(0, 40))})`);
  if (params.length > 1) return refuse('may give sslmode only once');
  const sslmode = params.length ? params[0][1] : 'disable';
  if (!(SSL_MODES as readonly string[]).includes(sslmode))
    return refuse(`must have an sslmode of ${SSL_MODES.join(', ')}`);

  return { ok: true, connection: { host, port, database, user, password, sslmode: sslmode as SslMode } };
}
