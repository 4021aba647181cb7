import { createHmac } from 'node:crypto';
import bcrypt from 'bcrypt';
import { config, type Config } from '../config';
import { AppError, ErrorCode, fail } from './errors';
import { QueueFullError, Semaphore } from './semaphore';

/**
 * Marks hashes of the current scheme: bcrypt over a 44-character digest of the whole password. bcrypt alone
 * reads only the first 72 bytes, so two 128-character passwords sharing those bytes would be one password.
 * Hashes without the mark are plain bcrypt (written before the scheme existed) and still verify.
 */
const SCHEME = 'bcrypt-sha256:';

/**
 * A keyed digest rather than a bare SHA-256: the bcrypt input then matches no unsalted SHA-256 leaked from
 * another site. Base64 so the input never holds a NUL byte (where bcrypt would stop reading).
 */
const digest = (password: string) =>
  createHmac('sha256', 'tenantry password v1').update(password, 'utf8').digest('base64');

let rounds = config.bcryptRounds;
/** bcrypt takes a core for its whole run: bounded so that a flood of logins cannot starve store requests. */
let slots = new Semaphore(config.passwordHashing.concurrency, config.passwordHashing.queueMax);
let dummyHash: string | undefined;

/**
 * Cost and hashing bounds of this process (the global configuration unless told otherwise, e.g. by a test
 * suite running with its own configuration).
 */
export function configurePasswordHashing(settings: Pick<Config, 'bcryptRounds' | 'passwordHashing'>): void {
  rounds = settings.bcryptRounds;
  slots = new Semaphore(settings.passwordHashing.concurrency, settings.passwordHashing.queueMax);
  dummyHash = undefined;
}

async function inSlot<T>(task: () => Promise<T>): Promise<T> {
  try {
    return await slots.run(task);
  } catch (err) {
    if (err instanceof QueueFullError) {
      throw fail(ErrorCode.SERVICE_UNAVAILABLE, 'Too many sign-ins are being checked right now; try again shortly', {
        retryAfterSeconds: Math.max(1, Math.ceil(err.retryAfterMs / 1000)),
      });
    }
    throw err;
  }
}

const hashNow = async (password: string) => SCHEME + (await bcrypt.hash(digest(password), rounds));

function compareNow(password: string, hash: string): Promise<boolean> {
  if (hash.startsWith(SCHEME)) return bcrypt.compare(digest(password), hash.slice(SCHEME.length));
  return bcrypt.compare(password, hash);
}

/** 503 SERVICE_UNAVAILABLE (with Retry-After) when every hashing slot and the queue are taken. */
export const hashPassword = (password: string): Promise<string> => inSlot(() => hashNow(password));

/** Checks either scheme. 503 SERVICE_UNAVAILABLE (with Retry-After) when hashing is saturated. */
export const verifyPassword = (password: string, hash: string): Promise<boolean> =>
  inSlot(() => compareNow(password, hash));

/** Compare against a fixed hash so that an unknown e-mail costs as much time as a wrong password. */
export function burnPasswordCheck(password: string): Promise<void> {
  return inSlot(async () => {
    dummyHash ??= await hashNow('not-a-real-password-just-for-timing');
    await compareNow(password, dummyHash);
  });
}

/**
 * After a successful check: the hash to store instead when `hash` is of the old scheme, else undefined.
 * Also undefined when hashing is saturated (the upgrade waits for a later sign-in rather than fail this one).
 */
export async function upgradedHash(password: string, hash: string): Promise<string | undefined> {
  if (hash.startsWith(SCHEME)) return undefined;
  try {
    return await hashPassword(password);
  } catch (err) {
    if (err instanceof AppError && err.code === ErrorCode.SERVICE_UNAVAILABLE) return undefined;
    throw err;
  }
}
