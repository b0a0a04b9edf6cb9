// A strict, bounded JSON reader. JSON.parse cannot serve the contract: it
// rounds integers past 2^53, keeps the last of two equal keys without a
// word, and has no limits. This reader keeps every number as written,
// every member in order, reports keys sent twice (compared after
// unescaping and under Unicode simple case folding, as the Go decoder
// compares them) and refuses documents beyond the contract's limits with
// the same codes as the API (too_deep, too_long, too_many_keys,
// too_many_elements, malformed_body).

import { goRuneU } from "./text.js";

/** A JSON number, kept exactly as written. */
export class JsonNumber {
  /** @param raw the number's literal, such as "1", "1.5" or "1e3" */
  constructor(readonly raw: string) {}
  /** Whether the literal is an integer without fraction or exponent. */
  isInteger(): boolean {
    return /^-?\d+$/.test(this.raw);
  }
  /** The literal as an exact bigint; throws when it is not an integer literal. */
  toBigInt(): bigint {
    if (!this.isInteger()) throw new TypeError(`not an integer: ${this.raw}`);
    return BigInt(this.raw);
  }
  /** The literal as the nearest double. */
  toNumber(): number {
    return Number(this.raw);
  }
}

/** A JSON object, its members in the order written (duplicates kept). */
export class JsonObject {
  /** The members, [key, value], in document order. */
  readonly members: Array<[string, JsonValue]> = [];
  /** The value of the first member named key exactly, or undefined. */
  get(key: string): JsonValue | undefined {
    for (const [k, v] of this.members) if (k === key) return v;
    return undefined;
  }
  /** Whether a member is named key exactly. */
  has(key: string): boolean {
    return this.members.some(([k]) => k === key);
  }
}

/** A JSON value as this reader returns it. */
export type JsonValue = null | boolean | string | JsonNumber | JsonValue[] | JsonObject;

/** The bounds of a document (the API's defaults). */
export interface JsonLimits {
  /** Deepest nesting of objects and arrays (8). */
  maxDepth: number;
  /** Longest string (between its quotes) or number, in bytes as written (8192). */
  maxStringBytes: number;
  /** Most keys of one object (64). */
  maxKeys: number;
  /** Most elements of one array (1000). */
  maxElements: number;
}

/** The API's limits of a request body. */
export const defaultLimits: JsonLimits = { maxDepth: 8, maxStringBytes: 8192, maxKeys: 64, maxElements: 1000 };

/** A document refused as a whole: code is the API's body error code. */
export class JsonError extends Error {
  /**
   * @param code malformed_body, too_deep, too_long, too_many_keys or too_many_elements
   * @param offset the byte offset where reading stopped
   */
  constructor(
    readonly code: string,
    message: string,
    readonly offset: number,
  ) {
    super(message);
    this.name = "JsonError";
  }
}

/** A key sent twice in one object: path names the later one as sent. */
export interface DuplicateKey {
  /** The dotted path of the later key ("properties.region", "VALUE"). */
  path: string;
  /** The later key, unescaped. */
  key: string;
  /** The earlier key it collides with, unescaped. */
  other: string;
  /** How deep the object is: 0 for the document's top-level object. */
  depth: number;
}

/** What parseJSON returns: the value and every duplicate key found. */
export interface Parsed {
  value: JsonValue;
  duplicates: DuplicateKey[];
}

/** The smallest rune of r's simple case folding orbit (approximating Go's unicode.SimpleFold). */
function foldMin(r: number): number {
  const s = String.fromCodePoint(r);
  let m = r;
  for (const t of [s.toLowerCase(), s.toUpperCase(), s.toUpperCase().toLowerCase(), s.toLowerCase().toUpperCase()]) {
    const c = t.codePointAt(0)!;
    if (t.length === String.fromCodePoint(c).length && c < m) m = c;
  }
  return m;
}

/** The key under which two keys equal under Unicode simple case folding collide. */
export function foldKey(k: string): string {
  let out = "";
  for (const ch of k) out += String.fromCodePoint(foldMin(ch.codePointAt(0)!));
  return out;
}

const decoder = new TextDecoder("utf-8", { fatal: false });

class Reader {
  i = 0;
  depth = 0;
  readonly duplicates: DuplicateKey[] = [];
  constructor(
    readonly b: Uint8Array,
    readonly lim: JsonLimits,
  ) {}

  fail(code: string, message: string, at = this.i): never {
    throw new JsonError(code, message, at);
  }

  syntax(message: string): never {
    this.fail("malformed_body", message);
  }

  ws(): void {
    const b = this.b;
    while (this.i < b.length && (b[this.i] === 0x20 || b[this.i] === 0x09 || b[this.i] === 0x0a || b[this.i] === 0x0d)) this.i++;
  }

  value(path: string): JsonValue {
    this.ws();
    if (this.i >= this.b.length) this.syntax("unexpected end of JSON input");
    const c = this.b[this.i];
    switch (c) {
      case 0x7b:
        return this.object(path);
      case 0x5b:
        return this.array(path);
      case 0x22:
        return this.string();
      case 0x74:
        return this.literal("true", true);
      case 0x66:
        return this.literal("false", false);
      case 0x6e:
        return this.literal("null", null);
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return this.number();
        this.syntax(`invalid character ${JSON.stringify(String.fromCharCode(c))} looking for the beginning of a value`);
    }
  }

  literal<T>(word: string, v: T): T {
    for (let k = 0; k < word.length; k++) {
      if (this.b[this.i + k] !== word.charCodeAt(k)) this.syntax(`invalid literal, expected ${word}`);
    }
    this.i += word.length;
    return v;
  }

  open(): void {
    if (this.depth >= this.lim.maxDepth) {
      this.fail("too_deep", `objects and arrays are nested deeper than ${this.lim.maxDepth} levels`);
    }
    this.depth++;
    this.i++;
  }

  object(path: string): JsonObject {
    const depth = this.depth;
    this.open();
    const obj = new JsonObject();
    const seen = new Map<string, string>();
    this.ws();
    if (this.b[this.i] === 0x7d) {
      this.i++;
      this.depth--;
      return obj;
    }
    for (;;) {
      this.ws();
      if (this.b[this.i] !== 0x22) this.syntax("expected a string key in an object");
      const key = this.string();
      if (obj.members.length + 1 > this.lim.maxKeys) this.fail("too_many_keys", `an object has more than ${this.lim.maxKeys} keys`);
      const keyPath = path === "" ? key : path + "." + key;
      const f = foldKey(key);
      const other = seen.get(f);
      if (other !== undefined) this.duplicates.push({ path: keyPath, key, other, depth });
      else seen.set(f, key);
      this.ws();
      if (this.b[this.i] !== 0x3a) this.syntax("expected ':' after an object key");
      this.i++;
      obj.members.push([key, this.value(keyPath)]);
      this.ws();
      const c = this.b[this.i];
      if (c === 0x2c) {
        this.i++;
        continue;
      }
      if (c === 0x7d) {
        this.i++;
        this.depth--;
        return obj;
      }
      this.syntax(this.i >= this.b.length ? "unexpected end of JSON input" : "expected ',' or '}' after an object member");
    }
  }

  array(path: string): JsonValue[] {
    this.open();
    const arr: JsonValue[] = [];
    this.ws();
    if (this.b[this.i] === 0x5d) {
      this.i++;
      this.depth--;
      return arr;
    }
    for (;;) {
      if (arr.length + 1 > this.lim.maxElements) this.fail("too_many_elements", `an array has more than ${this.lim.maxElements} elements`);
      arr.push(this.value(path));
      this.ws();
      const c = this.b[this.i];
      if (c === 0x2c) {
        this.i++;
        continue;
      }
      if (c === 0x5d) {
        this.i++;
        this.depth--;
        return arr;
      }
      this.syntax(this.i >= this.b.length ? "unexpected end of JSON input" : "expected ',' or ']' after an array element");
    }
  }

  string(): string {
    const b = this.b;
    const start = ++this.i;
    const out: number[] = [];
    let plain = true;
    for (;;) {
      if (this.i >= b.length) this.syntax("a string does not end");
      const c = b[this.i];
      if (c === 0x22) break;
      if (c < 0x20) this.syntax(`a string contains the control character ${goRuneU(c)}; escape it`);
      if (c !== 0x5c) {
        out.push(c);
        this.i++;
        continue;
      }
      plain = false;
      const e = b[this.i + 1];
      const simple: Record<number, number> = { 0x22: 0x22, 0x5c: 0x5c, 0x2f: 0x2f, 0x62: 8, 0x66: 12, 0x6e: 10, 0x72: 13, 0x74: 9 };
      if (e !== undefined && simple[e] !== undefined) {
        out.push(simple[e]);
        this.i += 2;
        continue;
      }
      if (e !== 0x75) this.syntax("invalid escape in a string");
      let r = this.hex4(this.i + 2);
      this.i += 6;
      if (r >= 0xd800 && r < 0xdc00) {
        // A high surrogate: a pair with a following \u low surrogate, or U+FFFD.
        if (b[this.i] === 0x5c && b[this.i + 1] === 0x75) {
          const lo = this.hex4(this.i + 2);
          if (lo >= 0xdc00 && lo < 0xe000) {
            r = 0x10000 + ((r - 0xd800) << 10) + (lo - 0xdc00);
            this.i += 6;
          } else r = 0xfffd;
        } else r = 0xfffd;
      } else if (r >= 0xdc00 && r < 0xe000) r = 0xfffd;
      const s = String.fromCodePoint(r);
      out.push(...new TextEncoder().encode(s));
    }
    const end = this.i;
    this.i++;
    if (end - start > this.lim.maxStringBytes) {
      this.fail("too_long", `a string is ${end - start} bytes long; at most ${this.lim.maxStringBytes} are allowed`, start - 1);
    }
    return decoder.decode(plain ? b.subarray(start, end) : Uint8Array.from(out));
  }

  hex4(at: number): number {
    const s = String.fromCharCode(...this.b.subarray(at, at + 4));
    if (!/^[0-9a-fA-F]{4}$/.test(s)) this.syntax("a \\u escape needs four hex digits");
    return parseInt(s, 16);
  }

  number(): JsonNumber {
    const b = this.b;
    const start = this.i;
    const digits = (): number => {
      const s = this.i;
      while (this.i < b.length && b[this.i] >= 0x30 && b[this.i] <= 0x39) this.i++;
      return this.i - s;
    };
    if (b[this.i] === 0x2d) this.i++;
    if (b[this.i] === 0x30) this.i++;
    else if (digits() === 0) this.syntax("expected a digit in a number");
    if (b[this.i] === 0x2e) {
      this.i++;
      if (digits() === 0) this.syntax("expected a digit after the decimal point");
    }
    if (b[this.i] === 0x65 || b[this.i] === 0x45) {
      this.i++;
      if (b[this.i] === 0x2b || b[this.i] === 0x2d) this.i++;
      if (digits() === 0) this.syntax("expected a digit in an exponent");
    }
    if (this.i - start > this.lim.maxStringBytes) {
      this.fail("too_long", `a number is ${this.i - start} bytes long; at most ${this.lim.maxStringBytes} are allowed`, start);
    }
    return new JsonNumber(String.fromCharCode(...b.subarray(start, this.i)));
  }
}

/**
 * Reads one JSON document (a string, or its UTF-8 bytes) within limits
 * (default: the API's). Throws a JsonError when the document is not JSON
 * or breaks a limit.
 */
export function parseJSON(doc: string | Uint8Array, limits: JsonLimits = defaultLimits): Parsed {
  const b = typeof doc === "string" ? new TextEncoder().encode(doc) : doc;
  const r = new Reader(b, limits);
  const value = r.value("");
  r.ws();
  if (r.i < b.length) r.syntax("invalid character after the top-level value");
  return { value, duplicates: r.duplicates };
}

/** Limits for reading the API's own answers: generous, still bounded. */
export const answerLimits: JsonLimits = { maxDepth: 32, maxStringBytes: 1 << 20, maxKeys: 1 << 16, maxElements: 1 << 20 };

/** What kind of JSON value v is, in the API's words: "a string", "a number", "null". */
export function jsonKind(v: JsonValue | undefined): string {
  if (v === undefined) return "nothing";
  if (v === null) return "null";
  if (typeof v === "string") return "a string";
  if (typeof v === "boolean") return "a boolean";
  if (v instanceof JsonNumber) return "a number";
  if (Array.isArray(v)) return "an array";
  return "an object";
}

