import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Integration tests start real agent processes and migrate real memory: generous limits, never speed asserts.
    testTimeout: 120_000,
    hookTimeout: 60_000,
    pool: 'forks',
    maxWorkers: 2,
    // Tests a file marks concurrent (each with its own agents) run this many at a time.
    maxConcurrency: 3,
  },
});
