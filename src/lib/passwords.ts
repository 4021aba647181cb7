import bcrypt from 'bcrypt';
import { config } from '../config';

export const hashPassword = (password: string): Promise<string> => bcrypt.hash(password, config.bcryptRounds);
export const verifyPassword = (password: string, hash: string): Promise<boolean> => bcrypt.compare(password, hash);

let dummyHash: Promise<string> | undefined;
/** Compare against a fixed hash so that an unknown e-mail costs as much time as a wrong password. */
export async function burnPasswordCheck(password: string): Promise<void> {
  dummyHash ??= hashPassword('not-a-real-password-just-for-timing');
  await bcrypt.compare(password, await dummyHash);
}
