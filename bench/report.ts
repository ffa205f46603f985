import { cpus, loadavg, platform, release, totalmem } from 'node:os';
import type { Configuration } from './configurations.js';
import { LIMIT_FIGURES, LIMIT_NAMES, figures, ratioId, ratioOf, type Figure } from './figures.js';
import type { Limits } from './limits.js';
import type { Params } from './params.js';

/** What one bench run writes to bench/results/<timestamp>.json. */
export interface Report {
  version: 1;
  date: string;
  mode: Params['mode'];
  wallSeconds: number;
  machine: {
    cpus: number;
    cpuModel: string;
    memoryBytes: number;
    node: string;
    os: string;
    /** 1-minute load average when the run started and when it ended: other work on the machine. */
    loadAverage: { start: number; end: number };
  };
  parameters: Params;
  /** The best of the limit probes' runs, which the ratios are taken to. */
  limits: Limits;
  /** Every run of every limit probe, MB/s. */
  limitSamples: Record<keyof Limits, number[]>;
  configurations: { name: string; description: string }[];
  figures: (Omit<Figure, 'ratioTo'> & { ratioTo?: string[] })[];
  /** Per configuration: every figure by id, and every ratio by id with the limit it was taken to. */
  results: Record<
    string,
    { figures: Record<string, number>; ratios: Record<string, { value: number; limit: string }> }
  >;
}

export function buildReport(
  params: Params,
  date: Date,
  loadAtStart: number,
  wallSeconds: number,
  { limits, samples }: { limits: Limits; samples: Record<keyof Limits, number[]> },
  configurations: Configuration[],
  values: Record<string, Record<string, number>>,
): Report {
  const defs = figures(params);
  const results: Report['results'] = {};
  for (const conf of configurations) {
    const got = values[conf.name] ?? {};
    const entry: Report['results'][string] = { figures: {}, ratios: {} };
    for (const f of defs) {
      const v = got[f.id];
      if (v === undefined) throw new Error(`${conf.name}: no figure ${f.id}`);
      entry.figures[f.id] = v;
      if (f.ratioTo) {
        const { ratio, limit } = ratioOf(v, limits, f.ratioTo);
        entry.ratios[ratioId(f.id)] = { value: ratio, limit: LIMIT_NAMES[limit] };
      }
    }
    results[conf.name] = entry;
  }
  const cpu = cpus();
  return {
    version: 1,
    date: date.toISOString(),
    mode: params.mode,
    wallSeconds,
    machine: {
      cpus: cpu.length,
      cpuModel: cpu[0]?.model ?? 'unknown',
      memoryBytes: totalmem(),
      node: process.version,
      os: `${platform()} ${release()}`,
      loadAverage: { start: loadAtStart, end: loadavg()[0]! },
    },
    parameters: params,
    limits,
    limitSamples: samples,
    configurations: configurations.map(({ name, description }) => ({ name, description })),
    figures: defs.map((f) => ({ ...f, ratioTo: f.ratioTo?.map((l) => LIMIT_NAMES[l]) })),
    results,
  };
}

/** A number with as many decimals as its size deserves. */
export function formatNumber(v: number): string {
  const abs = Math.abs(v);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : 3;
  return v.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function table(rows: string[][], rightAligned: Set<number>): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((cell, i) => (rightAligned.has(i) ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** The printed table: the limits, then one row per figure with a value and ratio column per configuration. */
export function formatReport(r: Report): string {
  const m = r.machine;
  const head = [
    `remex bench (${r.mode}), ${r.date}: ${m.cpus} × ${m.cpuModel}, ${(m.memoryBytes / 2 ** 30).toFixed(1)} GiB, Node ${m.node}, ${m.os}`,
    `1-minute load average ${m.loadAverage.start.toFixed(2)} at the start, ${m.loadAverage.end.toFixed(2)} at the end (other work on the machine makes figures noisy).`,
    'MB = 10^6 bytes. A ratio is the figure divided by the smallest of the limits it is read against (named).',
  ];
  const limitRows = [
    ['Limit (measured in this run, best of the runs)', 'unit', 'value', 'runs'],
    ...LIMIT_FIGURES.map((l) => [
      l.label,
      l.unit,
      formatNumber(r.limits[l.id]),
      r.limitSamples[l.id].map(formatNumber).join(', '),
    ]),
  ];
  const header = ['Scenario', 'Figure', 'unit'];
  for (const c of r.configurations) header.push(c.name, 'ratio');
  const rows = [header];
  let last = '';
  for (const f of r.figures) {
    const row = [f.scenario === last ? '' : f.scenario, f.label, f.unit];
    last = f.scenario;
    for (const c of r.configurations) {
      const res = r.results[c.name]!;
      row.push(formatNumber(res.figures[f.id]!));
      const ratio = res.ratios[ratioId(f.id)];
      row.push(ratio ? `${ratio.value.toFixed(2)} of ${ratio.limit}` : '');
    }
    rows.push(row);
  }
  const valueColumns = new Set<number>();
  r.configurations.forEach((_, i) => valueColumns.add(3 + 2 * i));
  return [
    ...head,
    '',
    table(limitRows, new Set([2])),
    '',
    table(rows, valueColumns),
    '',
    ...r.configurations.map((c) => `${c.name}: ${c.description}`),
    `wall time ${r.wallSeconds.toFixed(0)} s`,
  ].join('\n');
}
