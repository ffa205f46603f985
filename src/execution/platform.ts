import { failedPrecondition } from '../common/status.js';
/** A platform property as sent by clients (Action.platform / Command.platform). */
export interface Property {
  name: string;
  value: string;
}

/** What a worker offers: each key with every value it accepts (e.g. ISA: x86-64, x86-32). */
export type Offer = ReadonlyMap<string, ReadonlySet<string>>;

export function offerOf(properties: readonly { key: string; value: string }[]): Map<string, Set<string>> {
  const offer = new Map<string, Set<string>>();
  for (const { key, value } of properties) {
    let values = offer.get(key);
    if (!values) offer.set(key, (values = new Set()));
    values.add(value);
  }
  return offer;
}

/**
 * How a platform property is matched against what a worker offers (NativeLink's model):
 * - exact: the worker offers the key with this value (a key offered with several values
 *   matches any of them);
 * - minimum: a quantity (cpus, memory); the worker must offer at least as much;
 * - option: not matched at all; passed to the runner, which applies it or fails the
 *   action (network, container-image, chrootRootDigest).
 */
export type PropertyType = 'exact' | 'minimum' | 'option';

export type PropertyTypes = (name: string) => PropertyType;

/** The defaults: quantities are minimums, runner options are options, the rest exact. */
export const DEFAULT_PROPERTY_TYPES: Readonly<Record<string, PropertyType>> = {
  cpus: 'minimum',
  memory: 'minimum',
  network: 'option',
  'container-image': 'option',
  chrootRootDigest: 'option',
  'docker-pull': 'option',
};

export function propertyTypes(overrides: Readonly<Record<string, PropertyType>> = {}): PropertyTypes {
  const types = { ...DEFAULT_PROPERTY_TYPES, ...overrides };
  return (name) => types[name] ?? 'exact';
}

const UNIT = /^(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?$/i;
const FACTORS: Record<string, number> = {
  k: 1e3,
  m: 1e6,
  g: 1e9,
  t: 1e12,
  ki: 2 ** 10,
  mi: 2 ** 20,
  gi: 2 ** 30,
  ti: 2 ** 40,
};

/** A quantity such as "4", "0.5", "512m", "2Gi", "1GiB"; NaN when it is not one. */
export function parseQuantity(text: string): number {
  const m = UNIT.exec(text.trim());
  if (!m) return NaN;
  const unit = (m[2] ?? '').toLowerCase().replace(/b$/, '');
  const factor = unit === '' ? 1 : FACTORS[unit];
  return factor === undefined ? NaN : Number(m[1]) * factor;
}

function offered(p: Property, offer: Offer, type: PropertyType): boolean {
  if (type === 'option') return true;
  const values = offer.get(p.name);
  if (!values) return false;
  if (type === 'exact') return values.has(p.value);
  const wanted = parseQuantity(p.value);
  if (Number.isNaN(wanted)) return false;
  for (const v of values) if (parseQuantity(v) >= wanted) return true;
  return false;
}

/** The requirements a worker does not meet, by each property's type (exact by default). */
export function unmetRequirements(
  required: readonly Property[],
  offer: Offer,
  types: PropertyTypes = () => 'exact',
): Property[] {
  return required.filter((p) => !offered(p, offer, types(p.name)));
}

export function matches(required: readonly Property[], offer: Offer, types?: PropertyTypes): boolean {
  return unmetRequirements(required, offer, types).length === 0;
}

export function describeProperties(properties: readonly Property[]): string {
  return properties.length === 0 ? '(none)' : properties.map((p) => `${p.name}=${p.value}`).join(', ');
}

/** Normalises a platform: sorted by name then value, duplicates removed (REAPI requires sorted). */
export function normalisePlatform(properties: readonly Property[]): Property[] {
  const seen = new Set<string>();
  return [...properties]
    .sort((a, b) => (a.name === b.name ? (a.value < b.value ? -1 : 1) : a.name < b.name ? -1 : 1))
    .filter((p) => {
      const k = `${p.name}\0${p.value}`;
      if (seen.has(k)) return false;
      seen.add(k);
      return true;
    });
}

/**
 * FAILED_PRECONDITION for an action no connected worker can run, naming what none of
 * them offers (or that none is connected). Both schedulers give exactly this message.
 */
export function unschedulableStatus(
  platform: Property[],
  offers: Offer[],
  types?: PropertyTypes,
): { code: number; message: string } {
  const unmet = new Map<string, Property>();
  for (const offer of offers)
    for (const p of unmetRequirements(platform, offer, types)) unmet.set(`${p.name}=${p.value}`, p);
  const missing = offers.length === 0 ? platform : [...unmet.values()];
  const e = failedPrecondition(
    offers.length === 0
      ? `no worker is connected to run this action (platform: ${describeProperties(platform)})`
      : `no worker matches the platform properties ${describeProperties(missing)} (requested: ${describeProperties(platform)})`,
  );
  return { code: e.code, message: e.message };
}
