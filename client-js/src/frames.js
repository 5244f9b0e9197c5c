// Wire frames of protocol v1 (docs/protocol.md §3): encoding, decoding, base64 for binary payloads.

/** The protocol version this client speaks. */
export const PROTOCOL = 1;

const isBinary = (data) => data instanceof ArrayBuffer || ArrayBuffer.isView(data);

// A byte view of an ArrayBuffer or of any ArrayBuffer view (typed array, DataView).
const bytesOf = (data) => new Uint8Array(data.buffer || data, data.byteOffset, data.byteLength);

/** Standard base64 of a byte array. */
export function toBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

/** Bytes of a standard base64 string. */
export function fromBase64(text) {
  const chars = atob(text);
  const bytes = new Uint8Array(chars.length);
  for (let i = 0; i < chars.length; i++) bytes[i] = chars.charCodeAt(i);
  return bytes;
}

const utf8 = new TextEncoder();

/**
 * Encodes an application message as a `m` frame (a request when `request`, its id, is given). Returns the frame text and the payload size as
 * the server counts it (JSON text bytes, or decoded bytes for binary).
 */
export function encodeMessage(seq, data, event, request) {
  let text = `{"t":"m","s":${seq}`;
  if (request) text += `,"q":${request}`;
  if (event !== undefined) text += `,"e":${JSON.stringify(String(event))}`;
  let size;
  if (isBinary(data)) {
    const bytes = bytesOf(data);
    text += `,"b":"${toBase64(bytes)}"}`;
    size = bytes.length;
  } else {
    // Values JSON cannot represent (undefined, functions) travel as null.
    const json = JSON.stringify(data) ?? "null";
    text += `,"d":${json}}`;
    size = utf8.encode(json).length;
  }
  return { text, size };
}

/** The payload of a received `m` frame: a `Uint8Array` for binary, the JSON value otherwise. */
export const payloadOf = (frame) => ("b" in frame ? fromBase64(frame.b) : frame.d);
