import dns, { type LookupAddress } from 'node:dns';
import net from 'node:net';

/**
 * Store owners give us the address of their own database ("external" mode), and the platform then connects
 * there. Unchecked, that is a way into the platform's own network: its Postgres servers (where a trusting
 * pg_hba would let anyone in as the superuser), metadata endpoints, anything on a private address. With
 * the guard on, such connections may only reach public addresses: every address a host name resolves to is
 * checked at each connection (not once, so a name re-pointed later is caught too), as are literal
 * addresses; Unix sockets are refused.
 */

/** Loopback, private, link-local, shared (CGNAT), benchmarking, multicast, reserved and documentation ranges. */
const notPublicV4 = new net.BlockList();
for (const [address, prefix] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 3], // multicast 224/4 and reserved 240/4, with the broadcast address
] as const) {
  notPublicV4.addSubnet(address, prefix, 'ipv4');
}
// A separate list: a BlockList also matches IPv4 addresses against its IPv6 rules.
const notPublicV6 = new net.BlockList();
for (const [address, prefix] of [
  // Unspecified, loopback and IPv4-compatible (::a.b.c.d, deprecated): an IPv4 address in disguise either way.
  ['::', 96],
  ['::ffff:0:0:0', 96], // IPv4-translated (::ffff:0:a.b.c.d)
  // NAT64 prefixes, well-known and local-use: the gateway reaches whatever IPv4 address is embedded.
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001:db8::', 32],
  ['2002::', 16], // 6to4, another IPv4 address embedded
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10], // site-local (deprecated, still routed inside some networks)
  ['ff00::', 8],
] as const) {
  notPublicV6.addSubnet(address, prefix, 'ipv6');
}
const mappedV4 = new net.BlockList();
mappedV4.addSubnet('::ffff:0:0', 96, 'ipv6');

/** The IPv4 address inside an IPv4-mapped IPv6 address written either way (::ffff:a.b.c.d or ::ffff:hhhh:hhhh). */
function unmap(ip: string): string | undefined {
  const dotted = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  if (dotted) return dotted[1];
  const hex = /^::ffff:([0-9a-f]{1,4}):([0-9a-f]{1,4})$/i.exec(ip);
  if (!hex) return undefined;
  const [hi, lo] = [parseInt(hex[1], 16), parseInt(hex[2], 16)];
  return `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}`;
}

/** True when `ip` is an address on the public internet. */
export function isPublicAddress(ip: string): boolean {
  const family = net.isIP(ip);
  if (family === 4) return !notPublicV4.check(ip, 'ipv4');
  if (family !== 6) return false;
  if (mappedV4.check(ip, 'ipv6')) {
    const v4 = unmap(ip);
    return v4 !== undefined && isPublicAddress(v4);
  }
  return !notPublicV6.check(ip, 'ipv6');
}

export const PRIVATE_ADDRESS = 'EPRIVATEADDRESS';

const refusal = (host: string) =>
  Object.assign(new Error(`${host} is not a public address; external databases must be reachable on the internet`), {
    code: PRIVATE_ADDRESS,
  });

/** dns.lookup, failing when any address of the name is not public. */
function publicLookup(
  hostname: string,
  options: dns.LookupOptions,
  callback: (err: NodeJS.ErrnoException | null, address?: string | LookupAddress[], family?: number) => void,
): void {
  dns.lookup(hostname, { ...options, all: true }, (err, addresses) => {
    if (err) return callback(err);
    if (!addresses.length || addresses.some((a) => !isPublicAddress(a.address))) return callback(refusal(hostname));
    if (options.all) return callback(null, addresses);
    callback(null, addresses[0].address, addresses[0].family);
  });
}

/**
 * A socket for pg's `stream` option that connects to public addresses only. pg calls
 * `connect(port, host)` for TCP and `connect(path)` for a Unix socket.
 */
export function publicOnlySocket(): net.Socket {
  const socket = new net.Socket();
  const connect = socket.connect.bind(socket) as (options: net.TcpSocketConnectOpts) => net.Socket;
  socket.connect = ((port: unknown, host: unknown) => {
    const target = typeof host === 'string' ? host : String(port);
    if (typeof host !== 'string' || (net.isIP(host) && !isPublicAddress(host))) {
      process.nextTick(() => socket.destroy(refusal(target)));
      return socket;
    }
    return connect({ port: Number(port), host, lookup: publicLookup as net.LookupFunction });
  }) as typeof socket.connect;
  return socket;
}

/**
 * Whether connections to a store database must stay on public addresses: an owner's external database
 * when EXTERNAL_DB_PRIVATE_NETWORKS=deny (`config.tenant.externalPublicOnly`); never a managed one.
 */
export const mustBePublic = (mode: string | null | undefined, policy: { externalPublicOnly?: boolean }): boolean =>
  mode === 'external' && policy.externalPublicOnly === true;

/** The pg client options that apply `mustBePublic`: its socket, or nothing. */
export const guardedStream = (publicOnly: boolean): { stream?: typeof publicOnlySocket } =>
  publicOnly ? { stream: publicOnlySocket } : {};
