import { invalidArgument } from '../common/status.js';

/**
 * Validation of the names and paths an action gives the worker. Anything that could
 * escape the directory it belongs to is refused with INVALID_ARGUMENT, saying what and where.
 */

/** Checks one Directory entry name: a single, real path segment. */
export function checkNodeName(name: string, where: string): void {
  let problem: string | undefined;
  if (name === '') problem = 'an empty name';
  else if (name === '.' || name === '..') problem = `the name "${name}"`;
  else if (name.includes('/')) problem = `a name containing "/" (${JSON.stringify(name)})`;
  else if (name.includes('\0')) problem = `a name containing a NUL byte (${JSON.stringify(name)})`;
  if (problem)
    throw invalidArgument(`${where} has an entry with ${problem}; names must be single path segments`);
}

/**
 * Splits a relative, '/'-separated path into its segments after checking that it stays
 * below its base: no leading or trailing '/', no empty, "." or ".." segments. The empty
 * path (the base itself) is allowed only when `allowEmpty` is set.
 */
export function splitRelativePath(path: string, what: string, allowEmpty = false): string[] {
  if (path === '') {
    if (allowEmpty) return [];
    throw invalidArgument(`${what} is empty`);
  }
  const bad = (why: string) => invalidArgument(`${what} ${JSON.stringify(path)} ${why}`);
  if (path.startsWith('/')) throw bad('is absolute; it must be relative');
  if (path.endsWith('/')) throw bad('ends with "/"');
  if (path.includes('\0')) throw bad('contains a NUL byte');
  const segments = path.split('/');
  for (const s of segments) {
    if (s === '') throw bad('contains an empty segment ("//")');
    if (s === '.' || s === '..') throw bad(`contains a "${s}" segment`);
  }
  return segments;
}

/** Whether `path` is `base` or lies below it (both absolute and normalised). */
export function isWithin(base: string, path: string): boolean {
  return path === base || path.startsWith(base.endsWith('/') ? base : `${base}/`);
}
