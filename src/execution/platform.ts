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
 * The requirements a worker does not meet: every requested name must be offered with
 * the requested value (a key offered with several values matches any of them).
 */
export function unmetRequirements(required: readonly Property[], offer: Offer): Property[] {
  return required.filter((p) => !offer.get(p.name)?.has(p.value));
}

export function matches(required: readonly Property[], offer: Offer): boolean {
  return unmetRequirements(required, offer).length === 0;
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
