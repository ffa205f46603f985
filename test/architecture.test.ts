import { readdirSync, readFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The layers, read from the import statements of the source files (README "Layout",
// GUIDE point 11). A rule: no file under `from` (but those under `except`) imports
// anything under `mayNotImport`. Adding a rule is one line here.
const DOMAIN = ['src/execution/', 'src/cas/', 'src/actioncache/', 'src/asset/', 'src/kv/', 'src/bots/'];
const RULES: { from: string; except?: string[]; mayNotImport: string[] }[] = [
  { from: 'src/client/', mayNotImport: ['workers/'] },
  { from: 'workers/', mayNotImport: ['src/client/', 'src/server/', 'src/app/'] },
  { from: 'src/remote/', mayNotImport: ['workers/', 'src/client/', 'src/server/', 'src/app/'] },
  // The composition root sits on top: only the CLI starts it.
  { from: 'src/', except: ['src/app/', 'src/cli.ts'], mayNotImport: ['src/app/'] },
  // The gRPC edge knows gRPC, not the domain or the config that builds it.
  { from: 'src/server/', mayNotImport: [...DOMAIN, 'src/config/', 'src/client/', 'workers/'] },
  { from: 'src/common/', mayNotImport: [...DOMAIN, 'src/server/', 'src/config/', 'src/client/', 'workers/'] },
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

  it.each(RULES)('nothing under $from imports $mayNotImport', ({ from, except = [], mayNotImport }) => {
    const violations = [...graph]
      .filter(([file]) => file.startsWith(from) && !except.some((e) => file.startsWith(e)))
      .flatMap(([file, targets]) =>
        targets.filter((t) => mayNotImport.some((p) => t.startsWith(p))).map((t) => `${file} imports ${t}`),
      );
    expect(violations).toEqual([]);
  });

  it('no module imports itself back through others (no import cycles)', () => {
    const cycles: string[] = [];
    const state = new Map<string, 'visiting' | 'done'>();
    const visit = (file: string, path: string[]) => {
      if (state.get(file) === 'done') return;
      if (state.get(file) === 'visiting') {
        cycles.push([...path.slice(path.indexOf(file)), file].join(' -> '));
        return;
      }
      state.set(file, 'visiting');
      for (const target of graph.get(file) ?? []) if (graph.has(target)) visit(target, [...path, file]);
      state.set(file, 'done');
    };
    for (const file of graph.keys()) visit(file, []);
    expect(cycles).toEqual([]);
  });

  it('no folder imports itself back through another (src/x, workers): the layers point one way', () => {
    const folderOf = (file: string) =>
      file.startsWith('src/') ? file.split('/').slice(0, 2).join('/') : 'workers';
    const folders = new Map<string, Set<string>>();
    for (const [file, targets] of graph) {
      const from = folderOf(file);
      if (!folders.has(from)) folders.set(from, new Set());
      // Tests may reach across layers to set up what they test.
      if (file.endsWith('.test.ts') || file.endsWith('.contract.ts')) continue;
      for (const t of targets) if (graph.has(t) && folderOf(t) !== from) folders.get(from)!.add(folderOf(t));
    }
    const reaches = (from: string, to: string, seen = new Set<string>()): boolean => {
      for (const next of folders.get(from) ?? []) {
        if (next === to) return true;
        if (!seen.has(next) && (seen.add(next), reaches(next, to, seen))) return true;
      }
      return false;
    };
    const cycles = [...folders].flatMap(([from, targets]) =>
      [...targets].filter((to) => reaches(to, from)).map((to) => `${from} -> ${to} -> ... -> ${from}`),
    );
    expect(cycles).toEqual([]);
  });
});
