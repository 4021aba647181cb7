import { z } from 'zod';
import { registry, trimmedString } from '../http/openapi';
import { Email, Password, PersonName, Uuid } from '../http/schemas';
import { StoreSummaryDto } from '../stores/stores.schemas';

export const RegisterBody = z.strictObject({ email: Email, password: Password, name: PersonName });
export const LoginBody = z.strictObject({ email: Email, password: z.string().min(1).max(128) });
export const SwitchStoreBody = z.strictObject({ storeId: Uuid });
export const ProfileBody = z.strictObject({
  name: PersonName.optional(),
  phone: z
    .string()
    .trim()
    .regex(/^\+?[0-9 ()./-]{5,40}$/, 'must be a phone number')
    .nullable()
    .optional(),
  avatarUrl: z
    .url({ protocol: /^https?$/, message: 'must be an http(s) URL' })
    .max(2048)
    .openapi({ pattern: '^https?://[^\\s/?#]+([/?#]\\S*)?$' })
    .nullable()
    .optional(),
  company: z
    .strictObject({
      name: trimmedString(1, 200).nullable().optional(),
      vatId: trimmedString(2, 40).nullable().optional(),
      address: trimmedString(1, 500).nullable().optional(),
    })
    .optional(),
});

export const UserDto = registry.register(
  'User',
  z.object({
    id: z.uuid(),
    email: z.string(),
    name: z.string(),
    role: z.enum(['user', 'platform_admin']),
    phone: z.string().nullable(),
    avatarUrl: z.string().nullable(),
    company: z.object({ name: z.string().optional(), vatId: z.string().optional(), address: z.string().optional() }),
    createdAt: z.string(),
  }),
);

export const AuthResult = z.object({ user: UserDto, token: z.string() });
export const LoginResult = AuthResult.extend({ stores: z.array(StoreSummaryDto) });
export const MeResult = z.object({
  user: UserDto,
  stores: z.array(StoreSummaryDto),
  activeStoreId: z.uuid().nullable(),
});

export type RegisterInput = z.infer<typeof RegisterBody>;
export type LoginInput = z.infer<typeof LoginBody>;
export type ProfileInput = z.infer<typeof ProfileBody>;
