import { describe, expect, it } from 'vitest';
import { Code } from '../common/status.js';
import { ZstdChunkDecoder, zstdCompressBuffer, zstdDecompressBuffer } from './compression.js';

describe('zstd', () => {
  const data = Buffer.from('remex '.repeat(100_000));

  it('round-trips a buffer', async () => {
    const packed = await zstdCompressBuffer(data);
    expect(packed.length).toBeLessThan(data.length / 10);
    expect((await zstdDecompressBuffer(packed, data.length)).equals(data)).toBe(true);
  });

  it('decodes incrementally across arbitrary chunk boundaries', async () => {
    const packed = await zstdCompressBuffer(data);
    const decoder = new ZstdChunkDecoder(data.length);
    const out: Buffer[] = [];
    for (let i = 0; i < packed.length; i += 7) out.push(...decoder.decode(packed.subarray(i, i + 7)));
    decoder.finish();
    expect(Buffer.concat(out).equals(data)).toBe(true);
  });

  it('rejects output beyond the declared size (decompression bombs)', async () => {
    const packed = await zstdCompressBuffer(data);
    await expect(zstdDecompressBuffer(packed, 1000)).rejects.toMatchObject({ code: Code.INVALID_ARGUMENT });
    expect(() => new ZstdChunkDecoder(1000).decode(packed)).toThrow(/more than the declared 1000 bytes/);
  });

  it('rejects corrupt and truncated input with INVALID_ARGUMENT', async () => {
    await expect(zstdDecompressBuffer(Buffer.from('not zstd at all'), 100)).rejects.toMatchObject({
      code: Code.INVALID_ARGUMENT,
    });
    const packed = await zstdCompressBuffer(data);
    const decoder = new ZstdChunkDecoder(data.length);
    decoder.decode(packed.subarray(0, packed.length - 3));
    expect(() => decoder.finish()).toThrow(/middle of a frame/);
  });
});
