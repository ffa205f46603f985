import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The layers, read from the import statements of the source files (README "Layout",
// GUIDE point 11). A rule: no file under `from` imports anything under `mayNotImport`.
// Adding a rule is one line here.
const RULES: { from: string; mayNotImport: string[] }[] = [
  { from: 'src/client/', mayNotImport: ['workers/'] },
  { from: 'workers/', mayNotImport: ['src/client/'] },
  { from: 'src/remote/', mayNotImport: ['workers/', 'src/client/'] },
];

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const SCANNED = ['src', 'workers'];
const GENERATED = 'src/gen/';

/** Every .ts file under the scanned folders, as a repo-relative posix path. */
function sourceFiles(): string[] {
  return SCANNED.flatMap((dir) =>
    readdirSync(join(ROOT, dir), { recursive: true, encoding: 'utf8' })
      .map((f) => posix.join(dir, f.split('\\').join('/')))
      .filter((f) => f.endsWith('.ts') && !f.startsWith(GENERATED)),
  );
}

/** The repo-relative paths a file imports (relative specifiers only; packages are skipped). */
function importsOf(file: string, text: string): string[] {
  const specifiers = [...text.matchAll(/(?:\bfrom|\bimport)\s*\(?\s*['"]([^'"]+)['"]/g)].map((m) => m[1]!);
  return specifiers
    .filter((s) => s.startsWith('./') || s.startsWith('../'))
    .map((s) => posix.normalize(posix.join(posix.dirname(file), s)).replace(/\.js$/, '.ts'));
}

const graph = new Map(sourceFiles().map((f) => [f, importsOf(f, readFileSync(join(ROOT, f), 'utf8'))]));

describe('layers, read from the imports', () => {
  it('finds the source files and resolves their imports', () => {
    expect(graph.get('src/client/execute-command.ts')).toContain('src/remote/cas-client.ts');
    for (const rule of RULES) expect([...graph.keys()].some((f) => f.startsWith(rule.from))).toBe(true);
  });

  it.each(RULES)('nothing under $from imports $mayNotImport', ({ from, mayNotImport }) => {
    const violations = [...graph]
      .filter(([file]) => file.startsWith(from))
      .flatMap(([file, targets]) =>
        targets.filter((t) => mayNotImport.some((p) => t.startsWith(p))).map((t) => `${file} imports ${t}`),
      );
    expect(violations).toEqual([]);
  });
});
