import { createHash, type Hash } from 'node:crypto';
import { createBLAKE3, type IHasher } from 'hash-wasm';
import { invalidArgument } from './status.js';

/** A content digest: lowercase hex hash plus size, as in build.bazel.remote.execution.v2.Digest. */
export interface Digest {
  hash: string;
  sizeBytes: number;
}

/** Values of build.bazel.remote.execution.v2.DigestFunction.Value. */
export enum DigestFunctionValue {
  UNKNOWN = 0,
  SHA256 = 1,
  SHA1 = 2,
  MD5 = 3,
  VSO = 4,
  SHA384 = 5,
  SHA512 = 6,
  MURMUR3 = 7,
  SHA256TREE = 8,
  BLAKE3 = 9,
}

export interface Hasher {
  update(data: Buffer): void;
  /** Lowercase hex of the hash; the hasher cannot be used afterwards. */
  digest(): string;
}

export interface DigestFunction {
  /** Upper-case name as in the proto enum, e.g. "SHA256". */
  readonly name: string;
  /** Lower-case name as used in ByteStream resource names, e.g. "sha256". */
  readonly segment: string;
  readonly value: DigestFunctionValue;
  readonly hexLength: number;
  createHasher(): Promise<Hasher>;
}

class NodeHasher implements Hasher {
  constructor(private readonly hash: Hash) {}
  update(data: Buffer): void {
    this.hash.update(data);
  }
  digest(): string {
    return this.hash.digest('hex');
  }
}

function nodeFunction(name: string, algorithm: string, value: DigestFunctionValue, hexLength: number) {
  return {
    name,
    segment: name.toLowerCase(),
    value,
    hexLength,
    createHasher: async () => new NodeHasher(createHash(algorithm)),
  } satisfies DigestFunction;
}

// hash-wasm hashers are costly to create (a wasm instance each) but reusable, so finished
// ones go back to a pool. A hasher abandoned mid-stream is simply garbage collected.
const blake3Pool: IHasher[] = [];
async function blake3Hasher(): Promise<Hasher> {
  const hasher = blake3Pool.pop() ?? (await createBLAKE3());
  hasher.init();
  return {
    update: (data) => void hasher.update(data),
    digest: () => {
      const hex = hasher.digest('hex');
      blake3Pool.push(hasher);
      return hex;
    },
  };
}

export const SHA256 = nodeFunction('SHA256', 'sha256', DigestFunctionValue.SHA256, 64);
export const SHA1 = nodeFunction('SHA1', 'sha1', DigestFunctionValue.SHA1, 40);
export const MD5 = nodeFunction('MD5', 'md5', DigestFunctionValue.MD5, 32);
export const SHA384 = nodeFunction('SHA384', 'sha384', DigestFunctionValue.SHA384, 96);
export const SHA512 = nodeFunction('SHA512', 'sha512', DigestFunctionValue.SHA512, 128);
export const BLAKE3: DigestFunction = {
  name: 'BLAKE3',
  segment: 'blake3',
  value: DigestFunctionValue.BLAKE3,
  hexLength: 64,
  createHasher: blake3Hasher,
};

/** Every digest function remex implements end to end, SHA256 first (the default). */
export const DIGEST_FUNCTIONS: readonly DigestFunction[] = [SHA256, SHA1, MD5, SHA384, SHA512, BLAKE3];

const byValue = new Map(DIGEST_FUNCTIONS.map((f) => [f.value as number, f]));
const bySegment = new Map(DIGEST_FUNCTIONS.map((f) => [f.segment, f]));
// Functions the spec lets a client leave unset: the server infers them from the hash length.
const byInferableLength = new Map([SHA256, SHA1, MD5, SHA384, SHA512].map((f) => [f.hexLength, f]));

/**
 * The digest function a request asks for. UNKNOWN (0) means "infer from the hash length",
 * as REAPI allows for SHA256, SHA1, MD5, SHA384 and SHA512; with no hash to look at, SHA256.
 */
export function resolveDigestFunction(value: number, sampleHash?: string): DigestFunction {
  if (value === DigestFunctionValue.UNKNOWN) {
    if (sampleHash === undefined || sampleHash === '') return SHA256;
    const inferred = byInferableLength.get(sampleHash.length);
    if (!inferred) {
      throw invalidArgument(
        `cannot infer the digest function from a hash of ${sampleHash.length} characters; set digest_function`,
      );
    }
    return inferred;
  }
  const fn = byValue.get(value);
  if (!fn) {
    const name = DigestFunctionValue[value] ?? String(value);
    throw invalidArgument(`unsupported digest function ${name}`);
  }
  return fn;
}

/** The digest function named by a ByteStream resource-name segment ("sha256", "blake3", ...). */
export function digestFunctionBySegment(segment: string): DigestFunction | undefined {
  return bySegment.get(segment);
}

const HEX = /^[0-9a-f]*$/;

/** Checks a client-supplied digest and returns it normalised; throws INVALID_ARGUMENT saying what is wrong. */
export function validateDigest(
  d: { hash: string; sizeBytes: number } | undefined,
  fn: DigestFunction,
  what = 'digest',
): Digest {
  if (!d) throw invalidArgument(`${what} is missing`);
  const { hash, sizeBytes } = d;
  if (hash.length !== fn.hexLength || !HEX.test(hash)) {
    throw invalidArgument(
      `${what} has invalid hash "${hash.slice(0, 200)}": expected ${fn.hexLength} lowercase hex characters for ${fn.name}`,
    );
  }
  if (!Number.isSafeInteger(sizeBytes) || sizeBytes < 0) {
    throw invalidArgument(`${what} ${hash} has invalid size ${sizeBytes}: must be a non-negative integer`);
  }
  return { hash, sizeBytes };
}

/** Whether a digest read from stored data is well formed for the function (no throwing). */
export function isWellFormed(d: Digest, fn: DigestFunction): boolean {
  return (
    d.hash.length === fn.hexLength &&
    HEX.test(d.hash) &&
    Number.isSafeInteger(d.sizeBytes) &&
    d.sizeBytes >= 0
  );
}

export function digestString(d: Digest): string {
  return `${d.hash}/${d.sizeBytes}`;
}

/** Hashes a whole in-memory buffer (small blobs only). */
export async function digestOf(fn: DigestFunction, data: Buffer): Promise<Digest> {
  const h = await fn.createHasher();
  h.update(data);
  return { hash: h.digest(), sizeBytes: data.length };
}

const emptyHashes = new Map<DigestFunction, string>();
/** The hash of the empty blob, which every CAS holds implicitly. */
export async function emptyBlobHash(fn: DigestFunction): Promise<string> {
  let hash = emptyHashes.get(fn);
  if (hash === undefined) {
    hash = (await digestOf(fn, Buffer.alloc(0))).hash;
    emptyHashes.set(fn, hash);
  }
  return hash;
}
