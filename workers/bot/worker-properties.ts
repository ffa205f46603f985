import { arch, platform } from 'node:process';
import { RUNNER_PROPERTY } from '../runners/runner-selection.js';

export interface WorkerProperty {
  key: string;
  value: string;
}

const OS_FAMILIES: Partial<Record<NodeJS.Platform, string>> = {
  linux: 'linux',
  darwin: 'macos',
  win32: 'windows',
};
const ISAS: Partial<Record<NodeJS.Architecture, string>> = {
  x64: 'x86-64',
  ia32: 'x86-32',
  arm64: 'aarch64',
  arm: 'aarch32',
};

/** Parses a "key=value" property as given on the command line (the value may contain '=' or be empty). */
export function parseProperty(text: string): WorkerProperty {
  const at = text.indexOf('=');
  if (at <= 0) throw new Error(`property ${JSON.stringify(text)}: expected key=value`);
  return { key: text.slice(0, at), value: text.slice(at + 1) };
}

/**
 * The properties a worker advertises: those given (a key may appear with several values,
 * each matching), plus OSFamily and ISA of this host unless given: linux / macos / windows
 * and x86-64 / aarch64 / ..., the values remex's platform matching expects; plus `runner`
 * once for each runner offered (a given `runner` value must be one of them).
 */
export function workerProperties(
  given: readonly WorkerProperty[],
  runners: readonly string[] = [],
): WorkerProperty[] {
  const props = [...given];
  const has = (key: string) => props.some((p) => p.key === key);
  if (!has('OSFamily')) props.push({ key: 'OSFamily', value: OS_FAMILIES[platform] ?? platform });
  if (!has('ISA')) props.push({ key: 'ISA', value: ISAS[arch] ?? arch });
  if (runners.length > 0) {
    for (const p of given) {
      if (p.key === RUNNER_PROPERTY && !runners.includes(p.value)) {
        throw new Error(
          `property ${RUNNER_PROPERTY}=${p.value}: this worker does not offer that runner (it offers ${runners.join(', ')})`,
        );
      }
    }
    for (const name of runners) {
      if (!props.some((p) => p.key === RUNNER_PROPERTY && p.value === name))
        props.push({ key: RUNNER_PROPERTY, value: name });
    }
  }
  return props;
}
