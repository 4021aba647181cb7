import pino from 'pino';
import { config } from '../config';

/** Keys whose values never reach a log line, wherever they appear (two levels deep). */
const SECRET_KEYS = [
  'password',
  'newPassword',
  'passwordHash',
  'password_hash',
  'token',
  'secret',
  'secretKey',
  'webhookSecret',
  'connectionString',
  'credentials',
  'authorization',
  'cookie',
  'databaseUrl',
];

export const redactPaths = [
  ...SECRET_KEYS,
  ...SECRET_KEYS.map((k) => `*.${k}`),
  ...SECRET_KEYS.map((k) => `*.*.${k}`),
  'req.headers.authorization',
  'req.headers.cookie',
  'req.headers["stripe-signature"]',
];

export const logger = pino({
  level: config.logLevel,
  redact: { paths: redactPaths, censor: '[redacted]' },
  base: { service: 'tenantry' },
});

/** Strip credentials from a connection URL before it is shown anywhere. */
export function safeUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '[unparseable url]';
  }
}
