/**
 * The guest's service: one request in, at most one reply out, exactly as DESIGN.md ("Guest service protocol") says.
 *
 *   id    = 1 to 20 digits          key = 1 to 64 of [A-Za-z0-9_.-]          value = 1 to 200 of [!-~]
 *   <id> PING               ->  <id> PONG
 *   <id> PUT <key> <value>  ->  <id> OK                   (kv workload)
 *   <id> GET <key>          ->  <id> VALUE <value>  |  <id> NOTFOUND
 *   <id> DEL <key>          ->  <id> OK  |  <id> NOTFOUND
 *   anything else with an id -> <id> ERROR <reason>      (badverb, badkey, badvalue, full, toolong)
 *
 * A datagram whose first field is not an id gets no reply. Fields are separated by exactly one space, so an empty
 * field (two spaces, a leading or trailing space) is a bad key or value. How the cases without a named reason are
 * answered: a verb other than PING, PUT, GET, DEL (or PUT/GET/DEL on a VM without a table), or PING with arguments:
 * `badverb`; GET or DEL without exactly one key: `badkey`; PUT without a key: `badkey`; PUT without exactly one value
 * after the key: `badvalue`. Too long (over 512 bytes) is checked first, from the id alone.
 *
 * Runs on the vCPU worker; nothing here throws on any input: every byte sequence has an answer or none.
 */
import { MAX_REQUEST_BYTES } from './device.js';
import { MAX_KEY_BYTES, MAX_VALUE_BYTES, type KvTable } from './kv-table.js';

const SPACE = 0x20;
const MAX_ID_DIGITS = 20;

const isDigit = (byte: number): boolean => byte >= 0x30 && byte <= 0x39;
const isKeyByte = (byte: number): boolean =>
  (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a) || isDigit(byte) || byte === 0x5f || byte === 0x2e || byte === 0x2d;
const isValueByte = (byte: number): boolean => byte >= 0x21 && byte <= 0x7e;

const encoder = new TextEncoder();
const ascii = (bytes: Uint8Array): string => String.fromCharCode(...bytes);

function validKey(bytes: Uint8Array | undefined): bytes is Uint8Array {
  return bytes !== undefined && bytes.length >= 1 && bytes.length <= MAX_KEY_BYTES && bytes.every(isKeyByte);
}

function validValue(bytes: Uint8Array | undefined): bytes is Uint8Array {
  return bytes !== undefined && bytes.length >= 1 && bytes.length <= MAX_VALUE_BYTES && bytes.every(isValueByte);
}

/** The fields of `data` split at every single space (so empty fields stay, as empty arrays). */
function fields(data: Uint8Array): Uint8Array[] {
  const parts: Uint8Array[] = [];
  let start = 0;
  for (let i = 0; i <= data.length; i++) {
    if (i === data.length || data[i] === SPACE) {
      parts.push(data.subarray(start, i));
      start = i + 1;
    }
  }
  return parts;
}

/** The request's id when its first field is one (1-20 digits, then a space or the end), else undefined. */
function leadingId(data: Uint8Array): string | undefined {
  let end = 0;
  while (end < data.length && end <= MAX_ID_DIGITS && isDigit(data[end]!)) end++;
  if (end === 0 || end > MAX_ID_DIGITS) return undefined;
  if (end < data.length && data[end] !== SPACE) return undefined;
  return ascii(data.subarray(0, end));
}

/**
 * Answers one request. `length` is the datagram's length as sent (`data` may hold only its start); `table` is the
 * kv workload's table, or undefined for a VM that only answers PING. Returns the reply, or undefined for none.
 */
export function serveRequest(data: Uint8Array, length: number, table: KvTable | undefined): Uint8Array | undefined {
  const id = leadingId(data);
  if (id === undefined) return undefined;
  const reply = (text: string): Uint8Array => encoder.encode(`${id} ${text}`);
  if (length > MAX_REQUEST_BYTES || data.length < length) return reply('ERROR toolong');
  const [, verbBytes, ...args] = fields(data);
  const verb = verbBytes ? ascii(verbBytes) : '';
  if (verb === 'PING') return args.length === 0 ? reply('PONG') : reply('ERROR badverb');
  if (!table || (verb !== 'PUT' && verb !== 'GET' && verb !== 'DEL')) return reply('ERROR badverb');
  const [key, value, ...extra] = args;
  if (!validKey(key)) return reply('ERROR badkey');
  if (verb === 'PUT') {
    if (!validValue(value) || extra.length > 0) return reply('ERROR badvalue');
    return table.put(key, value) === 'ok' ? reply('OK') : reply('ERROR full');
  }
  if (value !== undefined) return reply('ERROR badkey');
  if (verb === 'GET') {
    const found = table.get(key);
    return found ? reply(`VALUE ${ascii(found)}`) : reply('NOTFOUND');
  }
  return table.delete(key) ? reply('OK') : reply('NOTFOUND');
}
