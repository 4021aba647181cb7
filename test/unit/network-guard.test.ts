import pg from 'pg';
import { isPublicAddress, PRIVATE_ADDRESS, publicOnlySocket } from '../../src/lib/network-guard';

test.each([
  ['8.8.8.8', true],
  ['1.1.1.1', true],
  ['172.32.0.1', true],
  ['2606:4700::1111', true],
  ['::ffff:8.8.8.8', true],
  ['::ffff:808:808', true],
  ['127.0.0.1', false],
  ['127.255.0.9', false],
  ['0.0.0.0', false],
  ['10.1.2.3', false],
  ['100.64.0.1', false],
  ['169.254.169.254', false],
  ['172.16.0.1', false],
  ['172.31.255.255', false],
  ['192.168.1.1', false],
  ['198.18.0.1', false],
  ['224.0.0.1', false],
  ['255.255.255.255', false],
  ['::', false],
  ['::1', false],
  ['::ffff:127.0.0.1', false],
  ['::ffff:7f00:1', false],
  ['0:0:0:0:0:ffff:a00:1', false],
  ['fd12:3456::1', false],
  ['fe80::1', false],
  ['ff02::1', false],
  ['2001:db8::1', false],
  ['::127.0.0.1', false],
  ['::8.8.8.8', false],
  ['::7f00:1', false],
  ['::ffff:0:127.0.0.1', false],
  ['::ffff:0:8.8.8.8', false],
  ['64:ff9b::7f00:1', false],
  ['64:ff9b:1::a00:1', false],
  ['64:ff9b:1:ffff::1', false],
  ['2002:7f00:1::1', false],
  ['2002:808:808::1', false],
  ['fec0::1', false],
  ['feff::1', false],
  ['64:ff9b:2::1', true],
  ['2003::1', true],
  ['not-an-address', false],
])('isPublicAddress(%s) is %s', (ip, expected) => {
  expect(isPublicAddress(ip)).toBe(expected);
});

test.each(['127.0.0.1', 'localhost', '::1', '/var/run/postgresql'])(
  'pg through publicOnlySocket does not connect to %s',
  async (host) => {
    const client = new pg.Client({
      host,
      port: 5432,
      user: 'postgres',
      database: 'postgres',
      stream: publicOnlySocket,
      connectionTimeoutMillis: 3000,
    });
    client.on('error', () => {});
    await expect(client.connect()).rejects.toMatchObject({ code: PRIVATE_ADDRESS });
  },
);
