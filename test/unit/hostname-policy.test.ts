import { checkClaimableHostname, isIpLiteral, normaliseHostname, routableHost } from '../../src/stores/hostname-policy';

const policy = { storeDomain: 'shops.example.com', platform: ['api.example.com'] };

describe('hostname policy', () => {
  test('normalises case, port and the trailing dot', () => {
    expect(normaliseHostname(' Shop.Example.COM.:8443 ')).toBe('shop.example.com');
    expect(normaliseHostname('[::1]:80')).toBe('[::1]');
    expect(normaliseHostname('::1')).toBe('::1');
    // One spelling for claim, verify, remove and routing: the ASCII form of an internationalised name.
    expect(normaliseHostname('Bücher.Example.ORG.')).toBe('xn--bcher-kva.example.org');
    expect(normaliseHostname('１２７.０.０.１')).toBe('127.0.0.1');
  });

  test.each([
    '127.0.0.1',
    '2130706433',
    '0x7f000001',
    '0X7F.0.0.1',
    '0177.0.0.1',
    '127.1',
    '1.2.3.0x4',
    '[::1]',
    '::ffff:127.0.0.1',
    'fe80::1',
    '8.8.8.8',
  ])('%s is an IP literal', (h) => {
    expect(isIpLiteral(normaliseHostname(h))).toBe(true);
  });

  test.each(['shop.example.com', '127.0.0.1.nip.io', 'a1.b2', 'xn--bcher-kva.de'])('%s is a name', (h) => {
    expect(isIpLiteral(h)).toBe(false);
  });

  test.each([
    ['localhost', 'not_allowed'],
    ['www.localhost', 'not_allowed'],
    ['intranet', 'not_allowed'],
    ['api.example.com', 'not_allowed'],
    ['v2.api.example.com', 'not_allowed'],
    ['shops.example.com', 'not_allowed'],
    ['other.shops.example.com', 'not_allowed'],
    ['10.1.2.3', 'not_allowed'],
    ['https://shop.example.org', 'invalid'],
    ['shop.example.org/x', 'invalid'],
    ['sh_op.example.org', 'invalid'],
    ['-shop.example.org', 'invalid'],
    ['shop..example.org', 'invalid'],
  ])('%s is refused as %s', (h, reason) => {
    const verdict = checkClaimableHostname(h, policy);
    expect(verdict).toMatchObject({ ok: false, reason });
  });

  test('internationalised names are claimed in their ASCII form; an ordinary name passes', () => {
    expect(checkClaimableHostname('Bücher.Example.ORG.', policy)).toEqual({
      ok: true,
      hostname: 'xn--bcher-kva.example.org',
    });
    expect(checkClaimableHostname('example.com', policy)).toEqual({ ok: true, hostname: 'example.com' });
  });

  test('IP addresses, single labels and platform names never route by host', () => {
    for (const h of ['127.0.0.1', '[::1]', 'localhost', 'api.example.com', '2130706433', undefined])
      expect(routableHost(h, policy)).toBeUndefined();
    expect(routableHost('Shop.Example.org.', policy)).toBe('shop.example.org');
    expect(routableHost('my-shop.shops.example.com', policy)).toBe('my-shop.shops.example.com');
  });
});
