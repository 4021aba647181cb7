// Loaded by jest before every test file, before any module reads the configuration.
import http from 'node:http';

// supertest listens on a random port per request and reaches it through Node's global agent, which keeps
// sockets alive across suites (jest shares core modules): a socket kept open to another suite's server (a child
// process still draining) could carry a request to that process once its port comes round to a new server.
// One connection per request in tests.
http.globalAgent = new http.Agent({ keepAlive: false });
process.env.NODE_ENV = 'test';
process.env.LOG_LEVEL ??= 'silent';
process.env.JWT_SECRET ??= 'test-secret-that-is-long-enough-for-hs256-0123456789';
process.env.ENCRYPTION_KEYS ??=
  'k2:' + Buffer.alloc(32, 2).toString('base64') + ',k1:' + Buffer.alloc(32, 1).toString('base64');
process.env.BCRYPT_ROUNDS ??= '4';
process.env.RATE_LIMIT_REGISTER_MAX ??= '100000';
process.env.RATE_LIMIT_LOGIN_MAX ??= '100000';
// The tests' "external" databases live on 127.0.0.1.
process.env.EXTERNAL_DB_PRIVATE_NETWORKS ??= 'allow';
process.env.PASSWORD_HASH_QUEUE_MAX ??= '10000';
process.env.WORKER = 'off';
process.env.TENANT_DB_PREFIX ??= 'tenantry_test_db_';
process.env.TENANT_WARM_POOL ??= '0';
// No suite gets a fleet migration run it did not ask for (the migration-run suite turns it on where it tests it).
process.env.TENANT_MIGRATE_ON_START ??= 'off';
