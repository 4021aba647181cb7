import bcrypt from 'bcrypt';
import { config } from '../../src/config';
import { configurePasswordHashing } from '../../src/lib/passwords';
import { registerUser } from '../helpers/app';
import { expectNoLeaks, expectProblem, recordingClient, type RecordingClient } from '../helpers/http';
import { useSuite } from '../helpers/suite';

/** bcrypt itself, watched: how many hashes or comparisons run at the same moment. */
function watchBcrypt() {
  let running = 0;
  let peak = 0;
  let calls = 0;
  const watch =
    <A extends unknown[], R>(original: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      calls++;
      peak = Math.max(peak, ++running);
      try {
        return await original(...args);
      } finally {
        running--;
      }
    };
  const originalHash = bcrypt.hash.bind(bcrypt) as (data: string, rounds: number) => Promise<string>;
  const originalCompare = bcrypt.compare.bind(bcrypt) as (data: string, hash: string) => Promise<boolean>;
  const hash = jest.spyOn(bcrypt, 'hash').mockImplementation(watch(originalHash) as never);
  const compare = jest.spyOn(bcrypt, 'compare').mockImplementation(watch(originalCompare) as never);
  return {
    stats: () => ({ peak, calls }),
    restore: () => {
      hash.mockRestore();
      compare.mockRestore();
    },
  };
}

describe('password hashing is bounded per instance (PASSWORD_HASH_CONCURRENCY=1, PASSWORD_HASH_QUEUE_MAX=2)', () => {
  // A real cost, so that a hash takes long enough for ten logins to find it busy.
  const t = useSuite('hashing', { BCRYPT_ROUNDS: '10', PASSWORD_HASH_CONCURRENCY: '1', PASSWORD_HASH_QUEUE_MAX: '2' });
  let api: RecordingClient;
  let watcher: ReturnType<typeof watchBcrypt>;
  beforeAll(() => {
    configurePasswordHashing(t.ctx.config);
    t.defer('the password hashing settings', () => configurePasswordHashing(config));
    api = recordingClient(t.app);
    watcher = watchBcrypt();
    t.defer('the bcrypt watch', () => watcher.restore());
  });
  t.checkAtEnd(() => expectNoLeaks(api.responses));

  test('a burst of 10 logins: some get 503 SERVICE_UNAVAILABLE with Retry-After, and never more than 1 hash runs at a time', async () => {
    const { user, password } = await registerUser(t.app);
    const before = watcher.stats().calls;
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        api.post('/api/auth/login').send({ email: user.email, password: i % 2 ? password : 'wrong-password' }),
      ),
    );

    const refused = results.filter((r) => r.status === 503);
    expect(refused.length).toBeGreaterThan(0);
    for (const res of refused) {
      expectProblem(res, 503, 'SERVICE_UNAVAILABLE');
      expect(Number(res.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    }
    for (const res of results.filter((r) => r.status !== 503)) expect([200, 401]).toContain(res.status);
    // Only the admitted ones hashed: at most the one running plus the two queued at any moment.
    expect(watcher.stats().calls - before).toBe(10 - refused.length);
    expect(watcher.stats().peak).toBe(1);
  });

  test('once the burst is over, logins are served again', async () => {
    const { user, password } = await registerUser(t.app);
    await api.post('/api/auth/login').send({ email: user.email, password }).expect(200);
    expect(watcher.stats().peak).toBe(1);
  });

  test('registrations wait for the same slots', async () => {
    const results = await Promise.all(
      Array.from({ length: 6 }, (_, i) =>
        api
          .post('/api/auth/register')
          .send({ email: `burst-${Date.now()}-${i}@example.test`, password: 'correct-horse-1', name: 'Burst' }),
      ),
    );
    expect(results.some((r) => r.status === 503)).toBe(true);
    for (const res of results) expect([201, 503]).toContain(res.status);
    expect(watcher.stats().peak).toBe(1);
  });
});
