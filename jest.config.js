/** @type {import('jest').Config} */
module.exports = {
  testEnvironment: 'node',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.test.ts'],
  transform: { '^.+\\.ts$': 'ts-jest' },
  setupFiles: ['<rootDir>/test/helpers/env.ts'],
  // Migrates the master schema once into a template that every suite's master database is copied from.
  globalSetup: '<rootDir>/test/helpers/master-template.ts',
  // Ends a run that a leaked handle would keep alive (see the file).
  globalTeardown: '<rootDir>/test/helpers/exit-bound.ts',
  testTimeout: 60000,
};
