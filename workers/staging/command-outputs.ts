import { invalidArgument } from '../../src/common/status.js';
import type { Command } from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import { splitRelativePath } from '../../src/remote/paths.js';

/** What a requested output may turn out to be. */
export type OutputKind = 'any' | 'file' | 'directory';

export interface RequestedOutput {
  /** As the Command gives it: relative to the working directory, '/'-separated. */
  path: string;
  segments: string[];
  kind: OutputKind;
}

export interface RequestedOutputs {
  /** 'paths' when the Command uses output_paths (REAPI v2.1+), else the legacy lists. */
  style: 'paths' | 'legacy';
  outputs: RequestedOutput[];
  /** Segments of working_directory below the input root. */
  workingDirectory: string[];
}

/**
 * The outputs a Command asks for, validated: output_paths when set (then output_files and
 * output_directories are ignored, as REAPI v2.1 says), else output_files as files and
 * output_directories as directories. Paths must stay below the working directory; the
 * empty path (the working directory itself) is accepted for directories.
 */
export function requestedOutputs(command: Command): RequestedOutputs {
  const workingDirectory = splitRelativePath(command.workingDirectory, 'working_directory', true);
  const outputs: RequestedOutput[] = [];
  const add = (path: string, kind: OutputKind, field: string) =>
    outputs.push({ path, kind, segments: splitRelativePath(path, `${field} entry`, kind !== 'file') });
  if (command.outputPaths.length > 0) {
    for (const p of command.outputPaths) add(p, 'any', 'output_paths');
    return { style: 'paths', outputs, workingDirectory };
  }
  for (const p of command.outputFiles) add(p, 'file', 'output_files');
  const files = new Set(command.outputFiles);
  for (const p of command.outputDirectories) {
    if (files.has(p)) throw invalidArgument(`"${p}" is listed in both output_files and output_directories`);
    add(p, 'directory', 'output_directories');
  }
  return { style: 'legacy', outputs, workingDirectory };
}
