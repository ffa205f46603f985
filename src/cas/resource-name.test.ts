import { describe, expect, it } from 'vitest';
import { Instances } from '../common/instances.js';
import { Code } from '../common/status.js';
import { parseReadResource, parseWriteResource } from './resource-name.js';

const h = 'a'.repeat(64);
const instances = new Instances(['', 'main', 'team/a/b']);

describe('ByteStream resource names', () => {
  it('parses reads with and without instance, function and compressor', () => {
    expect(parseReadResource(`blobs/${h}/12`, instances)).toMatchObject({
      instanceName: '',
      key: { hash: h, sizeBytes: 12 },
    });
    expect(parseReadResource(`team/a/b/blobs/${h}/12`, instances).instanceName).toBe('team/a/b');
    const b3 = parseReadResource(`main/blobs/blake3/${h}/5`, instances);
    expect(b3.key.fn.name).toBe('BLAKE3');
    const z = parseReadResource(`main/compressed-blobs/zstd/sha256/${h}/5`, instances);
    expect(z.compressor).toBe(1);
    expect(parseReadResource(`blobs/${'b'.repeat(40)}/3`, instances).key.fn.name).toBe('SHA1');
  });

  it('parses uploads and ignores trailing metadata', () => {
    const r = parseWriteResource(`main/uploads/5f0e/blobs/${h}/7/some/metadata`, instances);
    expect(r).toMatchObject({
      instanceName: 'main',
      key: { sizeBytes: 7 },
      uploadId: `main/uploads/5f0e/blobs/${h}/7`,
    });
    expect(parseWriteResource(`uploads/x/compressed-blobs/zstd/${h}/7`, instances).compressor).toBe(1);
  });

  it.each([
    ['no blobs segment', `foo/${h}/1`, /expected/],
    ['bad size', `blobs/${h}/-1`, /size "-1"/],
    ['short hash', `blobs/abc/1`, /cannot infer the digest function/],
    ['unknown function', `blobs/sha257/${h}/1`, /unknown digest function "sha257"/],
    ['unknown instance', `other/blobs/${h}/1`, /unknown instance name "other"/],
    ['unknown compressor', `compressed-blobs/lz4/${h}/1`, /unsupported compressor "lz4"/],
    ['trailing junk on read', `blobs/${h}/1/extra`, /unexpected segments/],
  ])('rejects %s with INVALID_ARGUMENT', (_name, resource, message) => {
    let caught: unknown;
    try {
      parseReadResource(resource, instances);
    } catch (e) {
      caught = e;
    }
    expect(caught).toMatchObject({ code: Code.INVALID_ARGUMENT, message: expect.stringMatching(message) });
  });
});
