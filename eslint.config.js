import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'src/gen/', 'node_modules/', 'coverage/', 'bench/results/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-restricted-imports': 'off',
    },
  },
  {
    // Domain modules never import grpc-js: only src/server/ and the *-service.ts edges do.
    files: ['src/cas/**/*.ts', 'src/actioncache/**/*.ts', 'src/common/**/*.ts', 'src/asset/**/*.ts'],
    ignores: ['**/*-service.ts', '**/*.test.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        { paths: [{ name: '@grpc/grpc-js', message: 'domain modules stay free of grpc-js' }] },
      ],
    },
  },
);
