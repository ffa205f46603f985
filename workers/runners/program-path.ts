import { access, constants, stat } from 'node:fs/promises';
import { resolve } from 'node:path';

/** PATH used when the Command sets none (REAPI leaves this to the implementation). */
export const DEFAULT_PATH = '/usr/local/bin:/usr/bin:/bin';

export type ProgramLookup = { found: true; path: string } | { found: false; reason: string };

async function isExecutableFile(path: string): Promise<boolean> {
  try {
    await access(path, constants.X_OK);
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/**
 * Resolves argv[0] as REAPI v2.3 says: a name containing '/' is a path relative to the
 * working directory (or absolute); a bare name is looked up in the PATH of the Command's
 * own environment (not the worker's), relative PATH entries taken from the working
 * directory; without a PATH, DEFAULT_PATH.
 */
export async function resolveProgram(
  program: string,
  envPath: string | undefined,
  cwd: string,
): Promise<ProgramLookup> {
  if (program.includes('/')) {
    // Let exec report a problem with an explicit path (ENOENT, EACCES) in its own words.
    return { found: true, path: resolve(cwd, program) };
  }
  const path = envPath ?? DEFAULT_PATH;
  for (const dir of path.split(':')) {
    const candidate = resolve(cwd, dir === '' ? '.' : dir, program);
    if (await isExecutableFile(candidate)) return { found: true, path: candidate };
  }
  return {
    found: false,
    reason: `${JSON.stringify(program)} was not found in PATH ${JSON.stringify(path)}${envPath === undefined ? ' (the Command sets no PATH; this is the worker default)' : ''}`,
  };
}
