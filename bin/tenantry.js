#!/usr/bin/env node
'use strict';
// The `tenantry` command (package.json "bin"): runs src/cli.ts through tsx, from the project's root so that
// it reads the same .env and DATA_DIR (the embedded Postgres) as `npm start`, wherever it is called from.
const path = require('node:path');

process.chdir(path.join(__dirname, '..'));
require('tsx/cjs/api').register();
try {
  require('../src/cli.ts');
} catch (err) {
  // An invalid configuration, reported as the server reports it, without a stack trace.
  console.error(`error: ${err.message}`);
  process.exitCode = 1;
}
