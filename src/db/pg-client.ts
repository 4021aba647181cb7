import pg from 'pg';

/**
 * One pg client for the length of `fn`: connected, heard on 'error', ended afterwards. A failed connect goes
 * through `onConnectError` when given (to say which setting was wrong), else as it came.
 */
export async function withClient<T>(
  config: pg.ClientConfig | string,
  fn: (client: pg.Client) => Promise<T>,
  onConnectError?: (err: unknown) => never,
): Promise<T> {
  const client = new pg.Client(
    typeof config === 'string' ? { connectionString: config, connectionTimeoutMillis: 5000 } : config,
  );
  // A lost connection also fails the pending query; unheard, the 'error' event would crash the process.
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (err) {
    if (onConnectError) onConnectError(err);
    throw err;
  }
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}
