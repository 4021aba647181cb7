import { z } from 'zod';
import { trimmedString } from './openapi';

/** Field schemas several features validate with (platform and store accounts, ids). */
export const Email = z
  .string()
  .trim()
  .max(254)
  .pipe(z.email({ message: 'must be a valid e-mail address' }))
  .transform((e) => e.toLowerCase())
  // The pattern the validator checks (z.email, after trimming), so that a client checking it agrees with us.
  .openapi({ type: 'string', format: 'email', pattern: z.regexes.email.source, maxLength: 254 });
export const Password = z.string().min(8, 'must be at least 8 characters').max(128, 'must be at most 128 characters');
export const PersonName = trimmedString(1, 200);
export const Uuid = z.uuid({ message: 'must be a UUID' });
/** The `:id` of a store's routes (stores, credits, admin). */
export const StoreIdParams = z.object({ id: Uuid });
