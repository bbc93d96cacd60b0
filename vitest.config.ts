import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration tests start real clusters; on a 2-core machine running many at once only adds noise.
    fileParallelism: false,
    // The JSON report lets CI print a plain 'N passed, N failed' line.
    reporters: ['default', ['json', { outputFile: 'results/test-report.json' }]],
  },
});
