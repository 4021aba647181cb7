import net from 'node:net';

/** A free TCP port on 127.0.0.1 (nothing listens on it once this returns). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export interface TcpProxy {
  port: number;
  close(): Promise<void>;
}

/**
 * Forward 127.0.0.1:`port` to `target` — a server "coming back" on an address that was dead before.
 * close() stops listening and cuts every forwarded connection.
 */
export async function startTcpProxy(port: number, target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target.port, target.host);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {
        client.destroy();
        upstream.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    port,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export interface StallingPgProxy extends TcpProxy {
  /** Databases whose new sessions are held, never answered (the client's connect timeout ends them). */
  stalled: Set<string>;
}

/** The database a Postgres StartupMessage asks for (its parameters: name NUL value NUL …, after length and version). */
function startupDatabase(message: Buffer): string | undefined {
  const fields = message.subarray(8, message.readInt32BE(0)).toString('utf8').split('\0');
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === 'database') return fields[i + 1];
  return undefined;
}

/**
 * Forward 127.0.0.1:`port` to the Postgres server `target` (no TLS), reading each session's startup message: a
 * new session to a database in `stalled` is held without an answer, as a server too busy to start it in time,
 * while the sessions of every other database go through.
 */
export async function startStallingPgProxy(
  port: number,
  target: { host: string; port: number },
): Promise<StallingPgProxy> {
  const sockets = new Set<net.Socket>();
  const stalled = new Set<string>();
  const track = (s: net.Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  };
  const server = net.createServer((client) => {
    track(client);
    client.on('error', () => client.destroy());
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      if (head.length < 8 || head.length < head.readInt32BE(0)) return;
      client.off('data', onData);
      client.pause();
      if (stalled.has(startupDatabase(head) ?? '')) return;
      const upstream = net.connect(target.port, target.host);
      track(upstream);
      for (const s of [client, upstream])
        s.on('error', () => {
          client.destroy();
          upstream.destroy();
        });
      upstream.write(head);
      client.pipe(upstream);
      upstream.pipe(client);
    };
    client.on('data', onData);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', resolve);
  });
  return {
    port,
    stalled,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
