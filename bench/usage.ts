/**
 * The store read path with request counting on (a Redis INCR per request, the default) against the same path
 * with USAGE_COUNTING=off, in one run: two servers on the same master and store databases, one at a time, the
 * rounds alternating so that a noisy moment does not favour one. Plan limits are checked where things are
 * created, so the read path carries none; the write path's limit check is not measured here.
 */
import { startServer, stopProcess } from './common';
import {
  bestOf,
  PORT,
  prepareRouting,
  printResults,
  routingServerEnv,
  runScenario,
  type ScenarioResult,
} from './routing';

export async function usageBenchmark(opts: {
  stores: number;
  duration: number;
  connections: number;
  rounds: number;
}): Promise<void> {
  const { keys, masterUrl } = await prepareRouting(opts.stores);
  const variants = [
    { name: 'routed, 1 hot store, counting on', env: { USAGE_COUNTING: 'on' } },
    { name: 'routed, 1 hot store, counting off', env: { USAGE_COUNTING: 'off' } },
  ];
  const runs = new Map<string, ScenarioResult[]>(variants.map((v) => [v.name, []]));
  for (let round = 1; round <= opts.rounds; round++) {
    for (const v of variants) {
      const server = await startServer({ ...routingServerEnv(masterUrl, keys), ...v.env });
      try {
        const r = await runScenario(v.name, {
          path: '/api/store/products',
          host: () => 's0.bench.test',
          duration: opts.duration,
          connections: opts.connections,
          port: PORT,
        });
        console.log(`  round ${round}: ${v.name}: ${r.rps} req/s, p99 ${r.p99} ms, errors ${r.errors + r.non2xx}`);
        runs.get(v.name)!.push(r);
      } finally {
        await stopProcess(server);
      }
    }
  }
  const [on, off] = variants.map((v) => bestOf(runs.get(v.name)!));
  printResults([on, off]);
  console.log(`\ncounting on / off = ${(on.rps / off.rps).toFixed(3)}  (target ≥ 0.97)`);
}
