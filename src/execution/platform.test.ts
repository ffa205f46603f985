import { describe, expect, it } from 'vitest';
import { matches, normalisePlatform, offerOf, unmetRequirements } from './platform.js';

describe('platform matching', () => {
  const offer = offerOf([
    { key: 'OSFamily', value: 'linux' },
    { key: 'ISA', value: 'x86-64' },
    { key: 'ISA', value: 'x86-32' },
  ]);

  it('matches when every requirement is offered', () => {
    expect(matches([{ name: 'OSFamily', value: 'linux' }], offer)).toBe(true);
    expect(matches([], offer)).toBe(true);
  });

  it('a key offered with several values matches any of them', () => {
    expect(matches([{ name: 'ISA', value: 'x86-32' }], offer)).toBe(true);
    expect(matches([{ name: 'ISA', value: 'x86-64' }], offer)).toBe(true);
  });

  it('names the requirements that are not met', () => {
    const unmet = unmetRequirements(
      [
        { name: 'OSFamily', value: 'windows' },
        { name: 'ISA', value: 'x86-64' },
        { name: 'gpu', value: 'a100' },
      ],
      offer,
    );
    expect(unmet).toEqual([
      { name: 'OSFamily', value: 'windows' },
      { name: 'gpu', value: 'a100' },
    ]);
  });

  it('normalises order and duplicates', () => {
    expect(
      normalisePlatform([
        { name: 'b', value: '1' },
        { name: 'a', value: '2' },
        { name: 'a', value: '1' },
        { name: 'b', value: '1' },
      ]),
    ).toEqual([
      { name: 'a', value: '1' },
      { name: 'a', value: '2' },
      { name: 'b', value: '1' },
    ]);
  });
});
