import pino from 'pino';
import pretty from 'pino-pretty';
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

/**
 * JSON lines, one per event, for log collectors; in a terminal during development, coloured lines a
 * person reads. Written synchronously either way: with pino's default asynchronous stdout, the lines
 * logged just before process.exit (the end of a shutdown, a failed start) came out of order or not at all.
 */
const readable = process.stdout.isTTY === true && !config.isProduction;

export const logger = pino(
  {
    level: config.logLevel,
    redact: { paths: redactPaths, censor: '[redacted]' },
    base: { service: 'tenantry' },
  },
  readable
    ? pretty({ sync: true, colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service' })
    : pino.destination({ dest: 1, sync: true }),
);

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
