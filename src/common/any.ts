import type { Any } from '../gen/google/protobuf/any.js';

const TYPE_PREFIX = 'type.googleapis.com/';

/** google.protobuf.Any of an encoded message, under the usual type URL prefix. */
export function pack(typeName: string, value: Uint8Array): Any {
  return { typeUrl: TYPE_PREFIX + typeName, value: Buffer.from(value) };
}

/** Whether the Any carries the message type, whatever its URL prefix ("type.googleapis.com/", "", ...). */
export function carries(any: Any | undefined, typeName: string): any is Any {
  return any !== undefined && any.typeUrl.slice(any.typeUrl.lastIndexOf('/') + 1) === typeName;
}
