/**
 * Imported before anything of src/ (which reads the configuration when loaded): the OpenAPI document must not
 * depend on this machine's .env or secrets, so the scripts run with throwaway secrets, write no development
 * secrets file and log nothing.
 */
import { randomBytes } from 'node:crypto';

process.env.JWT_SECRET ??= randomBytes(48).toString('base64url');
process.env.ENCRYPTION_KEYS ??= `openapi:${randomBytes(32).toString('base64')}`;
process.env.LOG_LEVEL = 'silent';
