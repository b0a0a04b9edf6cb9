// The event contract: the same rules, limits and messages as the Go
// events package (events/event.go and events/fieldcheck), and the same
// canonical JSON, byte for byte.

import { webcrypto } from "node:crypto";
import { JsonError, JsonNumber, JsonObject, type JsonValue, defaultLimits, foldKey, jsonKind, parseJSON, type JsonLimits } from "./json.js";
import { byteLength, compareBytes, decodeRune, goDuration, goQuote, goQuoteRune, goRuneU, utf8Bytes, validUTF8 } from "./text.js";
import { dateNanos, formatRFC3339Nano, nowNanos, parseRFC3339, unixSeconds } from "./timefmt.js";

/** The longest idempotency id, in bytes of printable ASCII. */
export const MAX_ID_LEN = 128;
/** The longest tenant or metric name. */
export const MAX_NAME_LEN = 128;
/** The largest value an event may carry: 2^53. */
export const MAX_VALUE = 1n << 53n;
/** The longest source, in bytes. */
export const MAX_SOURCE_LEN = 256;
/** The most properties an event may carry. */
export const MAX_PROPERTIES = 32;
/** The longest property key, in bytes. */
export const MAX_PROPERTY_KEY_LEN = 128;
/** The longest property value, in bytes. */
export const MAX_PROPERTY_VALUE_LEN = 1024;
/** How old an event may be, in milliseconds: the 35-day dedup horizon. */
export const DEFAULT_HORIZON_MS = 35 * 24 * 3600 * 1000;
/** How far ahead of the clock an event may be, in milliseconds: 5 minutes. */
export const DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000;

/** Properties of an event: string dimensions. */
export type Properties = Record<string, string> | Map<string, string>;

/**
 * A usage event as a producer builds it: value units of metric used by
 * tenant at time. id and time may be left out when emitting (a UUIDv7 and
 * the current time are filled in); keep the event with its id if it may be
 * sent again.
 */
export interface EventInput {
  /** The idempotency key, unique per tenant: 1-128 printable ASCII characters. */
  id?: string;
  /** The customer the usage is billed to. */
  tenant: string;
  /** What was used, such as "api_calls" or "tokens". */
  metric: string;
  /** How much, in the smallest unit: a safe integer number or a bigint, 0 to 2^53. */
  value: number | bigint;
  /** When the usage happened: a Date or an RFC 3339 timestamp (nanoseconds kept). */
  time?: Date | string;
  /** The emitting service, optional. */
  source?: string;
  /** Optional string dimensions, at most 32. */
  properties?: Properties;
}

/** A valid event in its exact form: what is sent and what reads return. */
export interface MeteringEvent {
  id: string;
  tenant: string;
  metric: string;
  /** The value, exactly. */
  value: bigint;
  /** The time, in UTC RFC 3339 with only the significant fraction digits. */
  time: string;
  source?: string;
  properties?: Record<string, string>;
}

/** One reason an event was rejected, as the API reports it. */
export interface FieldError {
  /** The event's position in its batch (0 for one event). */
  index: number;
  /** The offending field, such as "value" or "properties.region". */
  field: string;
  /** What is wrong and what is expected. */
  message: string;
}

/** Every field error of one or more events. */
export class ValidationError extends Error {
  /** @param errors every field error, by event index */
  constructor(readonly errors: FieldError[]) {
    super(
      errors.length === 1
        ? "invalid event: " + fieldErrorString(errors[0])
        : `${errors.length} invalid fields: ${errors.map(fieldErrorString).join("; ")}`,
    );
    this.name = "ValidationError";
  }
}

/** A body refused as a whole (too deep, too long, not JSON): code is the API's. */
export class BodyError extends Error {
  /** @param code the API's error code, such as too_deep or malformed_body */
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = "BodyError";
  }
}

function fieldErrorString(e: FieldError): string {
  return `event ${e.index}: ${e.field}: ${e.message}`;
}

// UUIDv7 (RFC 9562): 48 bits of Unix milliseconds, then random bits. Ids
// made in the same millisecond by this process increase: the 12 bits
// after the version count up from a random start.
let lastMs = -1;
let seq = 0;

// Random bytes are drawn 4 KiB at a time.
const pool = new Uint8Array(4096);
let poolAt = pool.length;

/** A new UUIDv7: time-ordered, so ids of nearby events sort together in indexes. */
export function newId(): string {
  if (poolAt + 16 > pool.length) {
    webcrypto.getRandomValues(pool);
    poolAt = 0;
  }
  const b = pool.slice(poolAt, poolAt + 16);
  poolAt += 16;
  let ms = Date.now();
  if (ms <= lastMs) {
    seq++;
    if (seq > 0xfff) {
      lastMs++;
      seq = b[6] & 0x7;
    }
    ms = lastMs;
  } else {
    lastMs = ms;
    seq = ((b[6] & 0x7) << 8) | b[7];
  }
  for (let i = 5; i >= 0; i--) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = 0x70 | (seq >> 8);
  b[7] = seq & 0xff;
  b[8] = 0x80 | (b[8] & 0x3f);
  const h = Buffer.from(b).toString("hex");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** How events are checked: the contract's defaults unless set. */
export interface ValidatorOptions {
  /** How old an event may be, in milliseconds (default 35 days). */
  horizonMs?: number;
  /** How far ahead of now an event may be, in milliseconds (default 5 minutes). */
  maxFutureMs?: number;
  /** The clock (default: Date.now). */
  now?: () => Date;
}

// The zero time of Go (0001-01-01T00:00:00Z), which the contract reads as "no time".
const goZeroTime = parseRFC3339("0001-01-01T00:00:00Z")!;

class Errors {
  readonly list: FieldError[] = [];
  constructor(readonly index: number) {}
  add(field: string, message: string): void {
    this.list.push({ index: this.index, field, message });
  }
  check(field: string, message: string): void {
    if (message !== "") this.add(field, message);
  }
  has(field: string): boolean {
    return this.list.some((e) => e.field === field);
  }
}

// Fast paths: strings these match need no closer look.
const plainName = /^[A-Za-z0-9._:-]{1,128}$/;
const plainId = /^[\x20-\x7e]{1,128}$/;
const notPlainText = /[\x00-\x1f\x7f-\x9f\ud800-\udfff]/;
const needsEscape = /["\\\x00-\x1f\ud800-\udfff]/;

/** The name rule (tenant, metric): "" when allowed, else the message. */
export function checkName(s: string): string {
  if (plainName.test(s) && s !== "." && s !== "..") return "";
  const b = utf8Bytes(s);
  if (b.length === 0) return "is required (1-128 characters of A-Z a-z 0-9 . _ : -)";
  if (b.length > MAX_NAME_LEN) return `must be at most ${MAX_NAME_LEN} characters, got ${b.length}`;
  if (s === "." || s === "..") return `must not be ${goQuote(s)}`;
  for (let i = 0; i < b.length; i++) {
    const c = b[i];
    const ok = (c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x5f || c === 0x3a || c === 0x2d;
    if (!ok) {
      const [r] = decodeRune(b, i);
      return `may contain only A-Z a-z 0-9 . _ : -; found ${goQuoteRune(r)} at byte ${i}`;
    }
  }
  return "";
}

/** The text rule: valid UTF-8 without C0, DEL or C1 controls; "" when allowed. */
export function checkText(s: string): string {
  if (!notPlainText.test(s)) return "";
  const b = utf8Bytes(s);
  if (!validUTF8(b)) return "must be valid UTF-8";
  for (const ch of s) {
    const r = ch.codePointAt(0)!;
    if (r < 0x20 || (r >= 0x7f && r <= 0x9f)) return `must not contain control characters (found ${goRuneU(r)})`;
  }
  return "";
}

/** The rule of one property: [field, message], or ["", ""] when allowed. */
export function checkProperty(field: string, key: string, value: string): [string, string] {
  if (key === "") return [field, "keys must not be empty"];
  if (byteLength(key) <= MAX_PROPERTY_KEY_LEN && !notPlainText.test(key) && byteLength(value) <= MAX_PROPERTY_VALUE_LEN && !notPlainText.test(value)) {
    return ["", ""];
  }
  const kb = utf8Bytes(key);
  if (kb.length > MAX_PROPERTY_KEY_LEN) {
    return [field + "." + new TextDecoder().decode(kb.subarray(0, 16)) + "...", `key must be at most ${MAX_PROPERTY_KEY_LEN} bytes`];
  }
  const kt = checkText(key);
  if (kt !== "") return [field, `key ${goQuote(kb)} ${kt}`];
  const vl = byteLength(value);
  if (vl > MAX_PROPERTY_VALUE_LEN) return [field + "." + key, `must be at most ${MAX_PROPERTY_VALUE_LEN} bytes, got ${vl}`];
  const vt = checkText(value);
  if (vt !== "") return [field + "." + key, vt];
  return ["", ""];
}

function checkId(id: string): string {
  if (plainId.test(id)) return "";
  if (id === "") return "is required (1-128 printable ASCII characters; events.NewID makes one)";
  const b = utf8Bytes(id);
  if (b.length > MAX_ID_LEN) return `must be at most ${MAX_ID_LEN} characters, got ${b.length}`;
  for (let i = 0; i < b.length; i++) {
    if (b[i] < 0x20 || b[i] > 0x7e) return `must be printable ASCII; byte ${i} is 0x${b[i].toString(16).padStart(2, "0")}`;
  }
  return "";
}

function kindOf(v: unknown): string {
  if (v === null) return "null";
  if (v instanceof JsonNumber) return "a number";
  switch (typeof v) {
    case "string":
      return "a string";
    case "number":
    case "bigint":
      return "a number";
    case "boolean":
      return "a boolean";
    case "object":
      return Array.isArray(v) ? "an array" : "an object";
    default:
      return typeof v;
  }
}

/** Reads a string field: "" when absent or null, else it must be a string. */
function stringField(errs: Errors, field: string, v: unknown): string {
  if (v === undefined || v === null) return "";
  if (typeof v !== "string") {
    errs.add(field, `must be a string, got ${kindOf(v)}`);
    return "";
  }
  return v;
}

function truncate(s: string): Uint8Array {
  const b = utf8Bytes(s);
  return b.length > 40 ? Uint8Array.from([...b.subarray(0, 40), 0x2e, 0x2e, 0x2e]) : b;
}

const smallestUnit = "count in the smallest unit (bytes, milliseconds, tokens)";

/** Reads the value: an exact bigint, or an error message. */
function readValue(v: unknown): [bigint, string] {
  if (v === undefined || v === null) return [0n, "is required (an integer count in the smallest unit)"];
  if (typeof v === "bigint") return [v, ""];
  if (v instanceof JsonNumber) {
    const raw = v.raw;
    if (raw.startsWith("-")) return [0n, `must be at least 0, got ${raw}`];
    if (!v.isInteger()) return [0n, `must be an integer, got ${new TextDecoder().decode(truncate(raw))}; ${smallestUnit}`];
    return [BigInt(raw), ""];
  }
  if (typeof v !== "number") return [0n, `must be an integer, got ${kindOf(v)}`];
  if (Number.isNaN(v) || !Number.isFinite(v)) return [0n, `must be an integer, got ${v}`];
  if (v < 0 && Number.isInteger(v)) return [BigInt(v), ""];
  if (v < 0) return [0n, `must be at least 0, got ${v}`];
  if (!Number.isInteger(v)) return [0n, `must be an integer, got ${v}; ${smallestUnit}`];
  if (!Number.isSafeInteger(v)) {
    return [0n, `must be a safe integer (at most 2^53-1) when a number, got ${v}; pass a bigint for an exact value up to 2^53`];
  }
  return [BigInt(v), ""];
}

/** Reads the time: nanoseconds since the epoch, undefined for none, or an error message. */
function readTime(errs: Errors, v: unknown): bigint | undefined {
  if (v === undefined || v === null || v === "") return undefined;
  const bad = (got: string) => `must be an RFC 3339 timestamp such as 2026-11-21T19:00:00.123Z, got ${got}`;
  if (v instanceof Date) {
    if (Number.isNaN(v.getTime())) {
      errs.add("time", bad("an invalid Date"));
      return undefined;
    }
    return dateNanos(v);
  }
  if (typeof v !== "string") {
    errs.add("time", `must be a string, got ${kindOf(v)}`);
    return undefined;
  }
  const ns = parseRFC3339(v);
  if (ns === undefined) errs.add("time", bad(goQuote(truncate(v))));
  return ns;
}

function propertyEntries(errs: Errors, v: unknown): Array<[string, unknown]> | undefined {
  if (v === undefined || v === null) return undefined;
  if (v instanceof Map) return [...v.entries()];
  if (v instanceof JsonObject) return v.members;
  if (typeof v !== "object" || Array.isArray(v)) {
    errs.add("properties", `must be an object of string values, got ${kindOf(v)}`);
    return undefined;
  }
  return Object.entries(v as Record<string, unknown>);
}

/**
 * Checks one event as the Go events package does and returns it in its
 * exact form, or every field error tagged with index. A field of the
 * wrong type is reported once, as such, and not checked further.
 */
export function checkEvent(ev: unknown, index = 0, opts: ValidatorOptions = {}): { event?: MeteringEvent; errors: FieldError[] } {
  const errs = new Errors(index);
  if (ev === null || typeof ev !== "object" || Array.isArray(ev)) {
    errs.add("", `must be a JSON object: got ${kindOf(ev)}`);
    return { errors: errs.list };
  }
  const get = (k: string): unknown => (ev instanceof JsonObject ? ev.get(k) : (ev as Record<string, unknown>)[k]);
  // Decoding: each field must have its type; such an error hides the range check.
  const typed = new Errors(index);
  const id = stringField(typed, "id", get("id"));
  const tenant = stringField(typed, "tenant", get("tenant"));
  const metric = stringField(typed, "metric", get("metric"));
  const source = stringField(typed, "source", get("source"));
  const [value, vmsg] = readValue(get("value"));
  const valueDecodeError = vmsg !== "";
  typed.check("value", vmsg);
  const timeNs = readTime(typed, get("time"));
  const props: Record<string, string> = {};
  const entries = propertyEntries(typed, get("properties"));
  const keys: string[] = [];
  if (entries) {
    const sorted = [...entries].sort((a, b) => compareBytes(a[0], b[0]));
    for (const [k, pv] of sorted) {
      if (typeof pv !== "string") {
        typed.add("properties." + k, `must be a string, got ${kindOf(pv)}`);
        continue;
      }
      if (!Object.prototype.hasOwnProperty.call(props, k)) keys.push(k);
      Object.defineProperty(props, k, { value: pv, enumerable: true, writable: true, configurable: true });
    }
  }
  // Validation, as events.Validator.Validate.
  const val = new Errors(index);
  val.check("id", checkId(id));
  val.check("tenant", checkName(tenant));
  val.check("metric", checkName(metric));
  if (!valueDecodeError) {
    if (value < 0n) val.add("value", `must be at least 0, got ${value}`);
    else if (value > MAX_VALUE) val.add("value", `must be at most 2^53 (${MAX_VALUE}), got ${value}`);
  }
  checkTime(val, timeNs, opts);
  const sl = byteLength(source);
  if (sl > MAX_SOURCE_LEN) val.add("source", `must be at most ${MAX_SOURCE_LEN} bytes, got ${sl}`);
  else val.check("source", checkText(source));
  if (keys.length > MAX_PROPERTIES) val.add("properties", `must have at most ${MAX_PROPERTIES} keys, got ${keys.length}`);
  // Keys equal in any case would make an event the API refuses: the later
  // in byte order is refused, naming the earlier (keys are sorted).
  const folded = new Map<string, string>();
  for (const k of keys) {
    const fk = foldKey(k);
    const first = folded.get(fk);
    if (first !== undefined) {
      val.add(
        "properties." + k,
        `appears twice in the same object, also as ${goQuote(first)} (keys are compared after unescaping and in any case); send each field once`,
      );
      continue;
    }
    folded.set(fk, k);
    const [field, msg] = checkProperty("properties", k, props[k]);
    val.check(field, msg);
  }
  const errors = [...typed.list, ...val.list.filter((e) => !typed.has(e.field))];
  if (errors.length > 0) return { errors };
  const event: MeteringEvent = { id, tenant, metric, value, time: formatRFC3339Nano(timeNs!) };
  if (source !== "") event.source = source;
  if (keys.length > 0) event.properties = props;
  return { event, errors };
}

function checkTime(errs: Errors, t: bigint | undefined, opts: ValidatorOptions): void {
  if (errs.has("time")) return;
  if (t === undefined || t === goZeroTime) {
    errs.add("time", "is required (an RFC 3339 timestamp such as 2026-11-21T19:00:00Z)");
    return;
  }
  const now = opts.now ? dateNanos(opts.now()) : nowNanos();
  const horizon = BigInt(opts.horizonMs && opts.horizonMs > 0 ? opts.horizonMs : DEFAULT_HORIZON_MS) * 1_000_000n;
  const future = BigInt(opts.maxFutureMs && opts.maxFutureMs > 0 ? opts.maxFutureMs : DEFAULT_MAX_FUTURE_MS) * 1_000_000n;
  if (t > now + future) {
    errs.add("time", `is ${aheadBy(t, now)} ahead of the server clock; at most ${goDuration(future)} is allowed`);
  } else if (t < now - horizon) {
    errs.add("time", `is older than the ${goDuration(horizon)} dedup horizon; such usage can no longer be counted exactly once`);
  }
}

function aheadBy(t: bigint, now: bigint): string {
  const d = t - now;
  if (d < 48n * 3600n * 1_000_000_000n) {
    // time.Duration.Round(time.Second): halves away from zero.
    const s = 1_000_000_000n;
    const r = ((d + s / 2n) / s) * s;
    return goDuration(r);
  }
  return `${(unixSeconds(t) - unixSeconds(now) + 43200n) / 86400n} days`;
}

/** Checks ev and returns the field errors (empty when valid). */
export function validateEvent(ev: EventInput, opts: ValidatorOptions = {}): FieldError[] {
  return checkEvent(ev, 0, opts).errors;
}

/**
 * Returns ev in its exact form, filling in a new UUIDv7 id and the current
 * time when they are missing; throws a ValidationError listing every field
 * error.
 */
export function toEvent(ev: EventInput, opts: ValidatorOptions = {}): MeteringEvent {
  const filled = ev.id !== undefined && ev.time !== undefined ? ev : { ...ev, id: ev.id ?? newId(), time: ev.time ?? (opts.now ? opts.now() : new Date()) };
  const { event, errors } = checkEvent(filled, 0, opts);
  if (!event) throw new ValidationError(errors);
  return event;
}

/**
 * The canonical JSON of a valid event: fields in contract order, time in
 * UTC, source and properties omitted when empty, property keys sorted by
 * their bytes. The Go SDK, the API and this SDK write exactly these bytes.
 */
export function canonicalJSON(e: MeteringEvent): string {
  let out = `{"id":${wire(e.id)},"tenant":${wire(e.tenant)},"metric":${wire(e.metric)},"value":${e.value},"time":"${e.time}"`;
  if (e.source) out += `,"source":${wire(e.source)}`;
  const keys = e.properties ? Object.keys(e.properties).sort(compareBytes) : [];
  if (keys.length > 0) {
    out += `,"properties":{` + keys.map((k) => `${wire(k)}:${wire(e.properties![k])}`).join(",") + "}";
  }
  return out + "}";
}

/** A JSON string as the contract writes it (Go's jsonstring.Wire). */
export function wire(s: string): string {
  if (!needsEscape.test(s)) return '"' + s + '"';
  let out = '"';
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c === 0x22) out += '\\"';
    else if (c === 0x5c) out += "\\\\";
    else if (c === 0x0a) out += "\\n";
    else if (c === 0x0d) out += "\\r";
    else if (c === 0x09) out += "\\t";
    else if (c < 0x20) out += "\\u00" + c.toString(16).padStart(2, "0");
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && s.charCodeAt(i + 1) >= 0xdc00 && s.charCodeAt(i + 1) <= 0xdfff) {
      out += s[i] + s[i + 1];
      i++;
    } else if (c >= 0xd800 && c <= 0xdfff) out += "\\ufffd\\ufffd\\ufffd";
    else out += s[i];
  }
  return out + '"';
}

const eventFields = ["id", "tenant", "metric", "value", "time", "source", "properties"];
const unknownField = "unknown field; an event has id, tenant, metric, value, time, source and properties";

/**
 * Reads one event from JSON text as the API reads a single-object body:
 * keys matched exactly, a key sent twice (after unescaping, in any case)
 * refused, value an integer literal. Returns the event in its exact form;
 * throws a ValidationError (field errors) or a BodyError (a body that is
 * not JSON or breaks a limit).
 */
export function parseEvent(json: string | Uint8Array, opts: ValidatorOptions & { limits?: JsonLimits } = {}): MeteringEvent {
  let parsed;
  try {
    parsed = parseJSON(json, opts.limits ?? defaultLimits);
  } catch (e) {
    if (e instanceof JsonError) {
      throw new BodyError(e.code, e.code === "malformed_body" ? `the body is not valid JSON: ${e.message} at byte ${e.offset}` : e.message);
    }
    throw e;
  }
  const v: JsonValue = parsed.value;
  if (!(v instanceof JsonObject)) {
    throw new ValidationError([{ index: 0, field: "", message: `must be a JSON object: got ${jsonKind(v)}` }]);
  }
  const keyErrors: FieldError[] = [];
  // A key reported as sent twice is not reported again as unknown.
  const dupKeys = new Set(parsed.duplicates.filter((d) => d.depth === 0).map((d) => d.key));
  for (const [k] of v.members) {
    if (eventFields.includes(k) || dupKeys.has(k)) continue;
    let msg = unknownField;
    for (const f of eventFields) if (f.toLowerCase() === k.toLowerCase()) msg = `${unknownField}; names are matched exactly, send ${goQuote(f)}`;
    keyErrors.push({ index: 0, field: k, message: msg });
  }
  for (const d of parsed.duplicates) {
    keyErrors.push({
      index: 0,
      field: d.path,
      message:
        d.key === d.other
          ? "appears twice in the same object; send each field once"
          : `appears twice in the same object, also as ${goQuote(d.other)} (keys are compared after unescaping and in any case); send each field once`,
    });
  }
  const { event, errors } = checkEvent(v, 0, opts);
  const all = [...keyErrors, ...errors];
  if (all.length > 0 || !event) throw new ValidationError(all);
  return event;
}
