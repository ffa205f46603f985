import { createHash } from 'node:crypto';
import { lstat, readdir, readFile, readlink } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * A directory tree as sorted lines, one per entry: "D path", "F path x|- sha256",
 * "L path -> target". For comparing trees in tests and for debugging staging.
 */
export async function treeSnapshot(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const name of (await readdir(join(root, rel))).sort()) {
    const path = rel ? `${rel}/${name}` : name;
    const abs = join(root, path);
    const info = await lstat(abs);
    if (info.isSymbolicLink()) out.push(`L ${path} -> ${await readlink(abs)}`);
    else if (info.isDirectory()) out.push(`D ${path}`, ...(await treeSnapshot(root, path)));
    else {
      const hash = createHash('sha256')
        .update(await readFile(abs))
        .digest('hex');
      out.push(`F ${path} ${info.mode & 0o100 ? 'x' : '-'} ${hash}`);
    }
  }
  return out;
}
