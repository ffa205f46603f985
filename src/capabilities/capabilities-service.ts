import type {
  CapabilitiesServer,
  ServerCapabilities,
} from '../gen/build/bazel/remote/execution/v2/remote_execution.js';
import { DIGEST_FUNCTIONS } from '../common/digest.js';
import type { Instances } from '../common/instances.js';
import { SUPPORTED_COMPRESSORS } from '../cas/compression.js';
import { unary } from '../server/handlers.js';

export interface CapabilitiesOptions {
  maxBatchTotalSizeBytes: number;
  actionCacheUpdates: boolean;
  /** Whether this process serves the CAS/ActionCache (a split deployment may not). */
  cache: boolean;
  /** The priority range when remote execution is served. */
  execution?: { minPriority: number; maxPriority: number };
}

/** The REAPI versions remex implements: 2.0 up to 2.3 (output_paths, digest_function, compressors). */
export const LOW_API_VERSION = { major: 2, minor: 0, patch: 0, prerelease: '' };
export const HIGH_API_VERSION = { major: 2, minor: 3, patch: 0, prerelease: '' };

/** What this server really implements; nothing here is advertised before it works end to end. */
export function serverCapabilities(options: CapabilitiesOptions): ServerCapabilities {
  return {
    cacheCapabilities: options.cache
      ? {
          digestFunctions: DIGEST_FUNCTIONS.map((f) => f.value as number),
          actionCacheUpdateCapabilities: { updateEnabled: options.actionCacheUpdates },
          cachePriorityCapabilities: undefined,
          maxBatchTotalSizeBytes: options.maxBatchTotalSizeBytes,
          symlinkAbsolutePathStrategy: 1, // DISALLOWED: remex stores symlinks as given but never follows them
          supportedCompressors: SUPPORTED_COMPRESSORS.map((c) => c as number),
          supportedBatchUpdateCompressors: SUPPORTED_COMPRESSORS.map((c) => c as number),
          maxCasBlobSizeBytes: 0,
          splitBlobSupport: false,
          spliceBlobSupport: false,
          fastCdc2020Params: undefined,
          repMaxCdcParams: undefined,
        }
      : undefined,
    executionCapabilities: {
      // Workers stage and hash with SHA256; other functions are cache-only.
      digestFunction: 1,
      execEnabled: options.execution !== undefined,
      executionPriorityCapabilities: options.execution
        ? {
            priorities: [
              { minPriority: options.execution.minPriority, maxPriority: options.execution.maxPriority },
            ],
          }
        : undefined,
      supportedNodeProperties: [],
      digestFunctions: options.execution ? [1] : [],
    },
    deprecatedApiVersion: undefined,
    lowApiVersion: LOW_API_VERSION,
    highApiVersion: HIGH_API_VERSION,
  };
}

export function capabilitiesService(instances: Instances, options: CapabilitiesOptions): CapabilitiesServer {
  const caps = serverCapabilities(options);
  return {
    getCapabilities: unary('Capabilities/GetCapabilities', async (req) => {
      instances.check(req.instanceName);
      return caps;
    }),
  };
}
