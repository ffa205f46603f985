import { digestOf, validateDigest, type Digest } from '../../src/common/digest.js';
import { invalidArgument } from '../../src/common/status.js';
import {
  Action,
  Digest as DigestMessage,
} from '../../src/gen/build/bazel/remote/execution/v2/remote_execution.js';
import type { Any } from '../../src/gen/google/protobuf/any.js';
import type { CasClient } from '../../src/remote/cas-client.js';

const TYPE_PREFIX = 'type.googleapis.com/';
export const DIGEST_TYPE_URL = `${TYPE_PREFIX}build.bazel.remote.execution.v2.Digest`;
export const ACTION_TYPE_URL = `${TYPE_PREFIX}build.bazel.remote.execution.v2.Action`;
export const ACTION_RESULT_TYPE_URL = `${TYPE_PREFIX}build.bazel.remote.execution.v2.ActionResult`;

/** The message name an Any carries, whatever the URL prefix ("type.googleapis.com/", "", ...). */
function typeName(any: Any): string {
  return any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1);
}

/**
 * The Action a lease asks to run. BuildGrid-style payloads carry either the Action's
 * Digest (the Action is then read from the CAS) or the Action itself; anything else is
 * INVALID_ARGUMENT. Returns the action digest too when the payload names one.
 */
export async function actionOfPayload(
  payload: Any | undefined,
  cas: CasClient,
  signal?: AbortSignal,
): Promise<{ action: Action; actionDigest?: Digest }> {
  if (!payload) throw invalidArgument('the lease has no payload');
  const decode = <T>(what: string, fn: () => T): T => {
    try {
      return fn();
    } catch (err) {
      throw invalidArgument(`the lease payload is not a valid ${what}: ${(err as Error).message}`);
    }
  };
  switch (typeName(payload)) {
    case 'build.bazel.remote.execution.v2.Digest': {
      const digest = validateDigest(
        decode('Digest', () => DigestMessage.decode(payload.value)),
        cas.digestFunction,
        'lease payload digest',
      );
      const bytes = await cas.readBlob(digest, 'action', signal);
      return { action: decode('Action', () => Action.decode(bytes)), actionDigest: digest };
    }
    case 'build.bazel.remote.execution.v2.Action':
      return {
        action: decode('Action', () => Action.decode(payload.value)),
        // The digest of the bytes as sent: the Action digest when the server passes them through unchanged.
        actionDigest: await digestOf(cas.digestFunction, payload.value),
      };
    default:
      throw invalidArgument(
        `the lease payload has type ${JSON.stringify(payload.typeUrl)}; expected ${DIGEST_TYPE_URL} or ${ACTION_TYPE_URL}`,
      );
  }
}
