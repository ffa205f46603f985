import { Readable } from 'node:stream';

/** Collects a stream into one buffer. Only for blobs already known to be small. */
export async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
}

/** A stream over a buffer in bounded chunks, so large in-memory blobs are sent piecewise. */
export function bufferStream(buf: Buffer, chunkSize = 1 << 20): Readable {
  let pos = 0;
  return new Readable({
    read() {
      if (pos >= buf.length) {
        this.push(null);
        return;
      }
      const end = Math.min(buf.length, pos + chunkSize);
      this.push(buf.subarray(pos, end));
      pos = end;
    },
  });
}

/** The byte range [start, end) selected by an offset and optional limit, clamped to size. */
export function rangeBounds(size: number, range?: { offset: number; limit?: number }): [number, number] {
  const start = Math.min(range?.offset ?? 0, size);
  const end = range?.limit === undefined || range.limit === 0 ? size : Math.min(size, start + range.limit);
  return [start, end];
}
