import { z } from 'zod';
import { registry } from '../http/openapi';
import { Email, Password, PersonName } from '../http/schemas';

export const StoreRegisterBody = z.strictObject({ email: Email, password: Password, name: PersonName });
export const StoreLoginBody = z.strictObject({ email: Email, password: z.string().min(1).max(128) });
export const CreateStaffBody = z.strictObject({
  email: Email,
  name: PersonName,
  password: Password,
  role: z.enum(['admin', 'staff']),
});

export const StoreUserDto = registry.register(
  'StoreUser',
  z.object({
    id: z.uuid(),
    email: z.string(),
    name: z.string(),
    role: z.enum(['admin', 'staff', 'customer']),
    createdAt: z.string(),
  }),
);
export const StoreAuthResult = z.object({ user: StoreUserDto, token: z.string() });
export const CustomerDto = registry.register(
  'Customer',
  StoreUserDto.extend({ phone: z.string().nullable(), marketingOptIn: z.boolean() }),
);
export const StoreInfoDto = registry.register(
  'StoreInfo',
  z.object({ id: z.uuid(), name: z.string(), slug: z.string(), currency: z.string(), timezone: z.string() }),
);

export type StoreUser = z.infer<typeof StoreUserDto>;
export type StoreRegisterInput = z.infer<typeof StoreRegisterBody>;
export type StoreLoginInput = z.infer<typeof StoreLoginBody>;
export type CreateStaffInput = z.infer<typeof CreateStaffBody>;
