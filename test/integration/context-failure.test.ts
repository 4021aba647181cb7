import { spawn } from 'node:child_process';
import path from 'node:path';

/**
 * A context whose start fails part-way (here: the master database cannot be reached, after Redis was
 * connected) closes what it had opened: the process that asked for it can end by itself. Run in a child
 * process, so that a leaked socket shows as a process that does not exit.
 */
const ROOT = path.resolve(__dirname, '../..');

test('a failed createContext leaves no open connection behind: the process ends by itself', async () => {
  const script = `
    const { createContext } = require('./src/context');
    createContext({ masterUrl: 'postgres://postgres@127.0.0.1:1/nowhere', redisPrefix: 'test:ctxfail' })
      .then(() => { console.log('UNEXPECTED'); process.exit(3); })
      .catch((err) => console.log('REFUSED', err.message.split('\\n')[0]));
  `;
  const child = spawn(process.execPath, ['--import', 'tsx', '-e', script], {
    cwd: ROOT,
    env: { ...process.env, LOG_LEVEL: 'silent' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => (output += d));
  child.stderr.on('data', (d) => (output += d));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  try {
    const code = await exit;
    expect(output).toContain('REFUSED');
    // Killed (null) means something it opened kept it alive.
    expect(code).toBe(0);
  } finally {
    clearTimeout(timer);
    child.kill('SIGKILL');
  }
});
