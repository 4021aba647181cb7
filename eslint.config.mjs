// ESLint (`npm run lint`, part of `npm test`). Deliberately small: formatting is prettier's, types are tsc's;
// what is left here is what neither checks — imports that point one way (no cycle, the layering below) and a
// few cheap correctness rules. A rule is added with the bug it would have caught, not for its own sake.
import { readdirSync } from 'node:fs';
import { defineConfig } from 'eslint/config';
import tseslint from 'typescript-eslint';
import importX from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

/** The folders of src below the features; every other folder of src is a feature. */
const LOWER_DIRS = ['lib', 'types', 'models', 'db', 'http', 'queue'];
/**
 * Features (auth, credits, stores, …): each owns its routes, schemas and services and may import db, http, queue,
 * lib, models and config. Read from the disk so that a new or renamed feature folder is covered without an edit.
 */
const FEATURES = readdirSync(new URL('./src', import.meta.url), { withFileTypes: true })
  .filter((entry) => entry.isDirectory() && !LOWER_DIRS.includes(entry.name))
  .map((entry) => entry.name)
  .sort();
/** The modules that wire everything together: nothing below them imports them. */
const TOP = ['context', 'app', 'server', 'worker', 'cli', 'maintenance'].map((name) => `src/${name}.ts`);
const FEATURE_DIRS = FEATURES.map((name) => `src/${name}`);
const BOTTOM = ['src/lib', 'src/config.ts', 'src/types', 'src/models'];
/** The AppContext type names the db/queue classes it holds, so it may `import type` them (erased at run time). */
const APP_CONTEXT = 'src/app-context.ts';
const INFRASTRUCTURE = ['src/db', 'src/http', 'src/queue'];

/** Layers, bottom to top: lib/config/types/app-context/models → db/http/queue → features → the wiring. */
const layering = [
  {
    target: BOTTOM,
    from: [...INFRASTRUCTURE, ...FEATURE_DIRS, ...TOP],
    message:
      'lib, config, types and models are the bottom layer: they import no db/http/queue, feature or wiring module.',
  },
  {
    target: APP_CONTEXT,
    from: [...FEATURE_DIRS, ...TOP],
    message:
      'app-context is the bottom layer: it imports no feature and no wiring module (and db/http/queue only as types).',
  },
  {
    target: INFRASTRUCTURE,
    from: [...FEATURE_DIRS, ...TOP],
    message: 'db, http and queue import no feature (auth, stores, credits, …) and no wiring module (context, app, …).',
  },
  {
    target: FEATURE_DIRS,
    from: TOP,
    message:
      'A feature imports no wiring module (context, app, server, worker, cli, maintenance): it is handed what it needs.',
  },
  // Route pieces are not shared between features' routers: what two routers need lives in http/ or a service.
  ...FEATURES.map((feature) => ({
    target: `src/${feature}/**/*.routes.ts`,
    from: FEATURES.filter((other) => other !== feature).map((other) => `src/${other}/**/*.routes.ts`),
    message: "A feature's routes import no other feature's routes: move what both need to http/ or a service.",
  })),
];

export default defineConfig(
  { ignores: ['node_modules/', 'dist/', 'coverage/', '.data/', 'clients/', 'ops/', '*.js', '*.mjs'] },
  {
    files: ['{src,test,bench,scripts}/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { '@typescript-eslint': tseslint.plugin, 'import-x': importX },
    settings: {
      // Without the parser setting import-x cannot read the .ts files it follows, and no-cycle sees no cycle.
      'import-x/extensions': ['.ts', '.js'],
      'import-x/parsers': { '@typescript-eslint/parser': ['.ts'] },
      'import-x/resolver-next': [createTypeScriptImportResolver({ project: 'tsconfig.json' })],
    },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      '@typescript-eslint/no-unused-vars': [
        'error',
        {
          args: 'after-used',
          argsIgnorePattern: '^_',
          varsIgnorePattern: '^_',
          caughtErrors: 'none',
          ignoreRestSiblings: true,
        },
      ],
      // A promise nobody awaits loses its rejection (an unhandled rejection ends the process).
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
      'import-x/no-self-import': 'error',
      'import-x/no-duplicates': 'error',
      'no-debugger': 'error',
      // A `let` that a closure reads before its one assignment cannot be a const.
      'prefer-const': ['error', { ignoreReadBeforeAssign: true }],
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },
  {
    files: ['src/**/*.ts'],
    rules: {
      'import-x/no-cycle': ['error', { ignoreExternal: true }],
      'import-x/no-restricted-paths': ['error', { zones: layering }],
    },
  },
  {
    files: [APP_CONTEXT],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['./db/*', './http/*', './queue/*'],
              allowTypeImports: true,
              message: 'app-context imports db, http and queue modules only with `import type`.',
            },
          ],
        },
      ],
    },
  },
  {
    files: ['bin/**/*.js'],
    languageOptions: {
      sourceType: 'commonjs',
      globals: {
        require: 'readonly',
        module: 'writable',
        __dirname: 'readonly',
        process: 'readonly',
        console: 'readonly',
      },
    },
    rules: {
      'no-unused-vars': 'error',
      'no-undef': 'error',
      'prefer-const': 'error',
      eqeqeq: ['error', 'always', { null: 'ignore' }],
    },
  },
);
