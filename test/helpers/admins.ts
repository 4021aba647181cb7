import { grantPlatformAdmin } from '../../src/admin/platform-admins';
import { registerUser, type TestApp } from './app';

/**
 * A platform admin as an operator makes one: an account registered through the API, then granted the role
 * by the service behind `tenantry admin:grant`. Its token was issued before the grant (role claim `user`).
 */
export async function registerAdmin(
  t: TestApp,
  overrides: Partial<{ email: string; password: string; name: string }> = {},
) {
  const admin = await registerUser(t.app, { name: 'Platform Admin', ...overrides });
  await grantPlatformAdmin(t.ctx, admin.user.email, 'test');
  return admin;
}
