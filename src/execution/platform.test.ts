import { describe, expect, it } from 'vitest';
import {
  matches,
  normalisePlatform,
  offerOf,
  parseQuantity,
  propertyTypes,
  unmetRequirements,
} from './platform.js';

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

describe('property types', () => {
  const types = propertyTypes({ pool: 'exact' });
  const offer = offerOf([
    { key: 'cpus', value: '8' },
    { key: 'memory', value: '16Gi' },
    { key: 'pool', value: 'big' },
  ]);

  it('matches quantities as minimums, with units', () => {
    expect(matches([{ name: 'cpus', value: '4' }], offer, types)).toBe(true);
    expect(matches([{ name: 'cpus', value: '16' }], offer, types)).toBe(false);
    expect(matches([{ name: 'memory', value: '512m' }], offer, types)).toBe(true);
    expect(matches([{ name: 'memory', value: '32Gi' }], offer, types)).toBe(false);
    expect(matches([{ name: 'memory', value: 'lots' }], offer, types)).toBe(false);
  });

  it('does not match options: they are for the runner', () => {
    expect(
      matches(
        [
          { name: 'network', value: 'on' },
          { name: 'container-image', value: 'docker://x:1' },
        ],
        offer,
        types,
      ),
    ).toBe(true);
  });

  it('matches anything else exactly, and overrides apply', () => {
    expect(matches([{ name: 'pool', value: 'small' }], offer, types)).toBe(false);
    expect(matches([{ name: 'pool', value: 'small' }], offer, propertyTypes({ pool: 'option' }))).toBe(true);
  });

  it('parses quantities', () => {
    expect(parseQuantity('2')).toBe(2);
    expect(parseQuantity('0.5')).toBe(0.5);
    expect(parseQuantity('1k')).toBe(1000);
    expect(parseQuantity('1Ki')).toBe(1024);
    expect(parseQuantity('2GiB')).toBe(2 * 2 ** 30);
    expect(parseQuantity('x')).toBeNaN();
  });
});
