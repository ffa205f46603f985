import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ConfigError, configSchema, loadConfig, parseConfig, uploadsDir } from './config.js';

const CONFIG_DIR = fileURLToPath(new URL('../../config/', import.meta.url));

async function configFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...(await configFiles(p)));
    else if (entry.name.endsWith('.yaml')) out.push(p);
  }
  return out;
}

describe('config', () => {
  it('parses every config file kept in the repo', async () => {
    const files = await configFiles(CONFIG_DIR);
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (const file of files) await expect(loadConfig(file), file).resolves.toBeDefined();
  });

  it('the reference config states exactly the defaults', async () => {
    const reference = parse(await readFile(join(CONFIG_DIR, 'remex.reference.yaml'), 'utf8'));
    expect(parseConfig(reference)).toEqual(parseConfig({}));
    // Every top-level setting is documented in the reference.
    expect(Object.keys(reference).sort()).toEqual(
      Object.keys(configSchema.shape)
        .filter((k) => k !== 'dataDir')
        .sort(),
    );
  });

  it('parses sizes and durations with units', () => {
    const c = parseConfig({ cas: { type: 'memory', maxSize: '1.5GiB' }, uploads: { idleTimeout: '90s' } });
    expect(c.cas).toMatchObject({ maxSize: 1.5 * 2 ** 30 });
    expect(c.uploads.idleTimeout).toBe(90_000);
  });

  it.each([
    [{ cas: { type: 'disk', maxSize: '1GiB' } }, /cas\.path/],
    [{ cas: { type: 'tape', maxSize: 1 } }, /cas\.type/],
    [{ cas: { type: 'memory', maxSize: 'lots' } }, /cas\.maxSize: "lots" is not a size/],
    [{ actionCache: { type: 'memory', maxSize: 1, extra: true } }, /actionCache: .*extra/],
    [{ uploads: { idleTimeout: 'soon' } }, /uploads\.idleTimeout: "soon" is not a duration/],
    [{ instanceNames: [] }, /instanceNames/],
    [{ listn: 'typo' }, /listn/],
    [{ services: ['cas', 'scheduler'] }, /services\.1/],
    [{ services: ['cas', 'cas'] }, /services: a role is named twice/],
    [
      { cas: { type: 'tiered', fast: { type: 'memory', maxSize: 1 }, slow: { type: 's3' } } },
      /cas\.slow\.bucket/,
    ],
    [
      {
        cas: {
          type: 'sizePartitioning',
          threshold: '1MiB',
          small: { type: 'memory', maxSize: 1 },
          large: { type: 'existenceCaching', ttl: 'a while', backend: { type: 'memory', maxSize: 1 } },
        },
      },
      /cas\.large\.ttl: "a while" is not a duration/,
    ],
    [{ actionCache: { type: 'redis' } }, /actionCache\.url/],
    [{ execution: { scheduler: { type: 'postgres' } } }, /execution\.scheduler\.url/],
  ])('fails with the path of the bad field: %j', (raw, message) => {
    expect(() => parseConfig(raw)).toThrow(ConfigError);
    expect(() => parseConfig(raw)).toThrow(message);
  });

  describe('uploads.path', () => {
    const withUploads = (path: string, extra: object = {}) =>
      parseConfig({ dataDir: '/srv/remex', uploads: { path }, ...extra });

    it.each([
      ['', /the data directory itself/],
      ['.', /the data directory itself/],
      ['/srv/remex/', /the data directory itself/],
      ['..', /which holds the data directory \/srv\/remex/],
      ['/', /which holds the data directory/],
      ['cas', /overlaps cas\.path \(\/srv\/remex\/cas\)/],
      ['cas/spool', /overlaps cas\.path/],
      ['ac', /overlaps actionCache\.path/],
      ['workers', /overlaps workers\.workDir/],
    ])('refuses %j, which start-up would clear along with data', (path, message) => {
      const config = withUploads(path, { cas: { type: 'disk', path: 'cas', maxSize: '1GiB' } });
      expect(() => uploadsDir(config)).toThrow(ConfigError);
      expect(() => uploadsDir(config)).toThrow(message);
    });

    it('refuses a spool above a store nested in a composition', () => {
      const config = withUploads('/data', {
        cas: {
          type: 'tiered',
          fast: { type: 'memory', maxSize: 1 },
          slow: { type: 'disk', path: '/data/slow', maxSize: 1 },
        },
      });
      expect(() => uploadsDir(config)).toThrow(/overlaps cas\.slow\.path/);
    });

    it('accepts a directory of its own, relative or absolute', () => {
      expect(uploadsDir(withUploads('uploads'))).toBe('/srv/remex/uploads');
      expect(uploadsDir(withUploads('/var/spool/remex'))).toBe('/var/spool/remex');
      expect(uploadsDir(withUploads('casual'))).toBe('/srv/remex/casual');
    });
  });
});
