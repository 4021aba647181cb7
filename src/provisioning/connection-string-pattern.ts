/**
 * The OpenAPI document's patterns for an owner's database address, for clients that check a form before
 * sending it. Each accepts a subset of what connection-string.ts accepts (checked by
 * test/unit/connection-string-pattern.test.ts), so a value that matches is never refused as malformed; the
 * parser stays the rule, since a regular expression cannot say everything it checks (decoded lengths, URL
 * parsing).
 */

const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?';
/**
 * At most 253 characters (a trailing dot aside) before `end`; the last label starts with a letter, so that no
 * spelling of an IPv4 address (127.1, 0x7f000001) matches.
 */
const dnsName = (end: string) =>
  `(?=[A-Za-z0-9.-]{1,253}\\.?${end})(?:${LABEL}\\.)*[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\\.?`;
const OCTET = '(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])';
const IPV4 = `${OCTET}(?:\\.${OCTET}){3}`;
const H16 = '[0-9A-Fa-f]{1,4}';
/** The eight-group forms with at most one `::`; no embedded IPv4 and no zone id (the parser refuses zones). */
const IPV6 = [
  `(?:${H16}:){7}${H16}`,
  `(?:${H16}:){1,7}:`,
  `(?:${H16}:){1,6}:${H16}`,
  `(?:${H16}:){1,5}(?::${H16}){1,2}`,
  `(?:${H16}:){1,4}(?::${H16}){1,3}`,
  `(?:${H16}:){1,3}(?::${H16}){1,4}`,
  `(?:${H16}:){1,2}(?::${H16}){1,5}`,
  `${H16}:(?::${H16}){1,6}`,
  `:(?:(?::${H16}){1,7}|:)`,
].join('|');

/** One character of user, password or database: unreserved or sub-delims, or a printable ASCII byte percent-encoded. */
const URL_CHAR = "(?:[A-Za-z0-9._~!$&'()*+,;=-]|%(?:[2-6][0-9A-Fa-f]|7[0-9A-Ea-e]))";
const PORT = '(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])';

/** `host` of the host/port form: a DNS name, an IPv4 address, or an IPv6 address bare or in brackets. */
export const HOST_PATTERN = `^(?:${dnsName('$')}|${IPV4}|(?:${IPV6})|\\[(?:${IPV6})\\])$`;

export const CONNECTION_STRING_PATTERN =
  `^postgres(?:ql)?://${URL_CHAR}{1,63}(?::${URL_CHAR}{0,1000})?@(?:${dnsName('[:/]')}|${IPV4}|\\[(?:${IPV6})\\])(?::${PORT})?` +
  // Not a dot segment (`.`, `..`, `%2e`), which the URL parser removes: the path would name no database.
  `/(?!(?:\\.|%2[Ee]){1,2}(?:\\?|$))${URL_CHAR}{1,63}(?:\\?sslmode=(?:disable|require|verify-full))?$`;

/** No control characters (C0, DEL, C1): what the parser refuses in every part. */
export const NO_CONTROL_PATTERN = '^[^\\u0000-\\u001f\\u007f-\\u009f]*$';
