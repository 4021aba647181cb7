/**
 * `npm run bench [-- --only routing,usage] [--stores 1000] [--duration 10] [--connections 50]`
 * `npm run bench -- --only fleet [--stores 1000] [--fleet-instances 3] [--fleet-max-connections 50]`
 * `npm run bench -- --only drift [--stores 1000] [--rounds 2]`
 * `npm run bench -- --only migrations [--stores 1000] [--naive-sample 200] [--per-server 4]`
 * `npm run bench -- --only backups,moves [--products 100000] [--rounds 3] [--writers 4]`
 * Benchmarks are not tests: they print figures and ratios against baselines measured in the same run.
 */
import { parseArgs } from 'node:util';
import { creditsBenchmark } from './credits';
import { driftBenchmark } from './drift';
import { fleetBenchmark } from './fleet';
import { migrationsBenchmark } from './migrations';
import { provisioningBenchmark } from './provisioning';
import { routingBenchmark } from './routing';
import { usageBenchmark } from './usage';

async function main() {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      stores: { type: 'string', default: '1000' },
      duration: { type: 'string', default: '10' },
      connections: { type: 'string', default: '50' },
      rounds: { type: 'string', default: '2' },
      'provision-stores': { type: 'string', default: '50' },
      /** e.g. warm: run only these provisioning batches (baseline, template, warm) */
      'provision-batches': { type: 'string' },
      /** stores the credits benchmark spreads its spends over */
      'credit-stores': { type: 'string', default: '100' },
      /** e.g. 3,4: run only these routing scenarios (1 raw, 2 untenanted, 3 routed, 4 Zipf, 5 round-robin) */
      scenarios: { type: 'string' },
      /** API instances sharing one server's budget in the fleet benchmark (against one instance) */
      'fleet-instances': { type: 'string', default: '3' },
      /** max_connections of the fleet benchmark's own Postgres */
      'fleet-max-connections': { type: 'string', default: '50' },
      /** stores the naive migration baseline migrates (the rest extrapolated), and the run's perServer */
      'naive-sample': { type: 'string', default: '200' },
      'per-server': { type: 'string', default: '4' },
      /** products of the store the backups and moves benchmarks back up, restore and move */
      products: { type: 'string', default: '100000' },
      /** writers updating that store's products through the API while it is moved */
      writers: { type: 'string', default: '4' },
    },
  });
  const want = (name: string) => !values.only || values.only.split(',').includes(name);
  if (want('routing')) {
    console.log('\n## Routing\n');
    await routingBenchmark({
      stores: Number(values.stores),
      duration: Number(values.duration),
      connections: Number(values.connections),
      rounds: Number(values.rounds),
      scenarios: values.scenarios?.split(',').map(Number),
    });
  }
  if (want('usage')) {
    console.log('\n## Usage counting on the read path\n');
    await usageBenchmark({
      stores: Number(values.stores),
      duration: Number(values.duration),
      connections: Number(values.connections),
      rounds: Number(values.rounds),
    });
  }
  if (want('provisioning')) {
    console.log('\n## Provisioning\n');
    await provisioningBenchmark({
      stores: Number(values['provision-stores']),
      batches: values['provision-batches']?.split(','),
    });
  }
  if (want('credits')) {
    console.log('\n## Credits\n');
    await creditsBenchmark({
      stores: Number(values['credit-stores']),
      duration: Number(values.duration),
      connections: Number(values.connections),
      rounds: Number(values.rounds),
    });
  }
  if (want('fleet')) {
    console.log('\n## Fleet: one server budget, shared by instances\n');
    await fleetBenchmark({
      stores: Number(values.stores),
      duration: Number(values.duration),
      connections: Number(values.connections),
      rounds: Number(values.rounds),
      instances: Number(values['fleet-instances']),
      maxConnections: Number(values['fleet-max-connections']),
    });
  }
  if (want('drift')) {
    console.log('\n## Drift: a check over the fleet\n');
    await driftBenchmark({ stores: Number(values.stores), rounds: Number(values.rounds) });
  }
  if (want('migrations')) {
    console.log('\n## Fleet migrations: naive vs a Tenantry run\n');
    await migrationsBenchmark({
      stores: Number(values.stores),
      naiveSample: Number(values['naive-sample']),
      perServer: Number(values['per-server']),
      connections: 10,
      rate: 200,
    });
  }
  // Loaded only when asked: they run an app in this process with the test harness (test/helpers/env.ts).
  if (want('backups')) {
    console.log('\n## Backup and restore of one store vs pg_dump | pg_restore\n');
    const { backupsBenchmark } = await import('./backups.js');
    await backupsBenchmark({ products: Number(values.products), rounds: Number(values.rounds) });
  }
  if (want('moves')) {
    console.log("\n## A store's move to another server: the write pause\n");
    const { movesBenchmark } = await import('./moves.js');
    await movesBenchmark({
      products: Number(values.products),
      rounds: Number(values.rounds),
      writers: Number(values.writers),
    });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
