import { pgPassword, pgSsl } from '../../src/db/tenant-pg-options';
import { parseConnectionString, readHost } from '../../src/provisioning/connection-string';

const connection = (text: string) => {
  const parsed = parseConnectionString(text);
  if (!parsed.ok) throw new Error(`refused ${JSON.stringify(text)}: ${parsed.reason}`);
  return parsed.connection;
};

describe('parseConnectionString reads an owner connection string', () => {
  test('every part, with the port and sslmode defaulting to 5432 and disable', () => {
    expect(connection('postgres://shop:secret@db.example.com/shopdb')).toEqual({
      host: 'db.example.com',
      port: 5432,
      database: 'shopdb',
      user: 'shop',
      password: 'secret',
      sslmode: 'disable',
    });
    expect(connection('postgresql://shop:secret@db.example.com:6543/shopdb?sslmode=verify-full')).toEqual({
      host: 'db.example.com',
      port: 6543,
      database: 'shopdb',
      user: 'shop',
      password: 'secret',
      sslmode: 'verify-full',
    });
  });

  test('percent-encoded user, password and database are decoded; + stays a plus', () => {
    const password = 'p@ss:w/rd?#%&é+ 1';
    const c = connection(
      `postgres://${encodeURIComponent('shop.owner')}:${encodeURIComponent(password)}@db.example.com/${encodeURIComponent('my db')}`,
    );
    expect(c).toMatchObject({ user: 'shop.owner', password, database: 'my db' });
    expect(connection('postgres://u:a+b@h.example/db').password).toBe('a+b');
  });

  test('an empty password is kept as given', () => {
    expect(connection('postgres://u@h.example/db').password).toBe('');
    expect(connection('postgres://u:@h.example/db').password).toBe('');
  });

  test('IPv4 and bracketed IPv6 hosts; IPv6 is returned bare', () => {
    expect(connection('postgres://u:p@203.0.114.7:5432/db').host).toBe('203.0.114.7');
    expect(connection('postgres://u:p@[2606:4700::1111]:5432/db').host).toBe('2606:4700::1111');
  });

  test.each(['disable', 'require', 'verify-full'])('sslmode=%s', (mode) => {
    expect(connection(`postgres://u:p@h.example/db?sslmode=${mode}`).sslmode).toBe(mode);
  });
});

describe('parseConnectionString refuses, with a reason', () => {
  test.each([
    ['a file for the client to read', 'postgres://u:p@h.example/db?sslrootcert=/etc/passwd', /sslrootcert/],
    ['a client certificate', 'postgres://u:p@h.example/db?sslcert=/etc/ssl/cert.pem', /sslcert/],
    ['a client key', 'postgres://u:p@h.example/db?sslkey=/etc/ssl/key.pem', /sslkey/],
    ['a socket directory as a parameter', 'postgres://u:p@h.example/db?host=/var/run/postgresql', /"host"/],
    ['server options', 'postgres://u:p@h.example/db?options=-c%20statement_timeout%3D0', /options/],
    ['any other parameter', 'postgres://u:p@h.example/db?application_name=x', /application_name/],
    ['an sslmode we do not offer', 'postgres://u:p@h.example/db?sslmode=prefer', /sslmode/],
    ['sslmode twice', 'postgres://u:p@h.example/db?sslmode=require&sslmode=disable', /once/],
    ['no host (a Unix socket)', 'postgres://u:p@/db', /valid URL/],
    ['an empty host', 'postgres://u:p@:5432/db', /valid URL|host/],
    ['a percent-encoded socket path as host', 'postgres://u:p@%2Fvar%2Frun%2Fpostgresql/db', /host/],
    ['several hosts', 'postgres://u:p@h1.example,h2.example/db', /host/],
    ['an IPv4 address in another notation', 'postgres://u:p@127.1/db', /host/],
    ['an IPv4 address as one number', 'postgres://u:p@2130706433/db', /host/],
    ['an IPv4 address in hex', 'postgres://u:p@0x7f.0.0.1/db', /host/],
    ['port 0', 'postgres://u:p@h.example:0/db', /port/],
    ['a port out of range', 'postgres://u:p@h.example:70000/db', /valid URL/],
    ['a raw newline', 'postgres://u:p@h.example/db\n', /control/],
    ['a raw NUL', 'postgres://u:p\u0000@h.example/db', /control/],
    ['a raw tab inside', 'postgres://u:p@h.exa\tmple/db', /control/],
    ['an encoded NUL in the password', 'postgres://u:p%00@h.example/db', /control/],
    ['an encoded newline in the database', 'postgres://u:p@h.example/db%0a', /control/],
    ['an encoded newline in the user', 'postgres://u%0d%0a:p@h.example/db', /control/],
    ['an encoded control character in a parameter', 'postgres://u:p@h.example/db?sslmode=require%0a', /control/],
    ['a fragment', 'postgres://u:p@h.example/db#frag', /fragment/],
    ['an empty fragment', 'postgres://u:p@h.example/db#', /fragment/],
    ['the scheme alone', 'postgres://', /host/],
    ['not a URL', 'not a url', /valid URL/],
    ['another scheme', 'mysql://u:p@h.example/db', /postgres/],
    ['an https URL', 'https://u:p@h.example/db', /postgres/],
    ['a path of two segments', 'postgres://u:p@h.example/db/other', /one database/],
    ['a trailing slash after the database', 'postgres://u:p@h.example/db/', /one database/],
    ['no database', 'postgres://u:p@h.example', /one database|database/],
    ['an empty database', 'postgres://u:p@h.example/', /database/],
    ['no user', 'postgres://:p@h.example/db', /user/],
    ['a malformed percent-encoding', 'postgres://u:p%zz@h.example/db', /percent/],
    ['a database name over 63 characters', `postgres://u:p@h.example/${'d'.repeat(64)}`, /63/],
  ])('%s', (_what, text, reason) => {
    const parsed = parseConnectionString(text);
    expect(parsed.ok).toBe(false);
    if (!parsed.ok) expect(parsed.reason).toMatch(reason);
  });
});

test.each([
  ['db.example.com', 'db.example.com'],
  ['db.example.com.', 'db.example.com.'],
  ['localhost', 'localhost'],
  ['10.0.0.7', '10.0.0.7'],
  ['[::1]', '::1'],
  ['::1', undefined],
  ['127.000.000.001', undefined],
  ['fe80::1%eth0', undefined],
  ['[fe80::1%eth0]', undefined],
  ['-bad.example', undefined],
  ['under_score.example', undefined],
  ['', undefined],
  ['/var/run/postgresql', undefined],
])('readHost(%j) is %j', (host, expected) => {
  expect(readHost(host)).toBe(expected);
});

test('readHost takes a bare IPv6 address where asked to (the host field of the form)', () => {
  expect(readHost('2606:4700::1111', { bareIpv6: true })).toBe('2606:4700::1111');
  expect(readHost('fe80::1%eth0', { bareIpv6: true })).toBeUndefined();
});

test('pg gets TLS as asked: none, without certificate checks (require) or verified (verify-full, and older rows saying true)', () => {
  expect(pgSsl(undefined)).toBe(false);
  expect(pgSsl(false)).toBe(false);
  expect(pgSsl({ rejectUnauthorized: false })).toEqual({ rejectUnauthorized: false });
  expect(pgSsl(true)).toEqual({ rejectUnauthorized: true });
});

test('pg gets the password as given, even an empty one', () => {
  expect(pgPassword('')()).toBe('');
  expect(pgPassword('secret')()).toBe('secret');
});
