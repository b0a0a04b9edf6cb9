// Text functions that reproduce, byte for byte, what the Go side of the
// contract writes: strings as UTF-8 bytes, Go's %q quoting and %U, and
// time.Duration's String form. Field error messages must be the same in
// every language, so these follow Go's strconv and time packages exactly.

/**
 * The bytes of s as UTF-8; a lone surrogate (which UTF-8 cannot hold)
 * becomes the three bytes of its generalized UTF-8 encoding, which every
 * UTF-8 decoder, Go's included, refuses.
 */
export function utf8Bytes(s: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        c = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
        i++;
      }
    }
    if (c < 0x80) out.push(c);
    else if (c < 0x800) out.push(0xc0 | (c >> 6), 0x80 | (c & 0x3f));
    else if (c < 0x10000) out.push(0xe0 | (c >> 12), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
    else out.push(0xf0 | (c >> 18), 0x80 | ((c >> 12) & 0x3f), 0x80 | ((c >> 6) & 0x3f), 0x80 | (c & 0x3f));
  }
  return Uint8Array.from(out);
}

/** The length of s in UTF-8 bytes (a lone surrogate counts 3). */
export function byteLength(s: string): number {
  if (!nonASCII.test(s)) return s.length;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length && isLow(s.charCodeAt(i + 1))) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

function isLow(c: number): boolean {
  return c >= 0xdc00 && c <= 0xdfff;
}

/** The rune at b[i] and its width, as Go's utf8.DecodeRune: 0xfffd and 1 for an invalid byte. */
export function decodeRune(b: Uint8Array, i: number): [number, number] {
  const c0 = b[i];
  if (c0 < 0x80) return [c0, 1];
  const cont = (j: number, lo = 0x80, hi = 0xbf): boolean => j < b.length && b[j] >= lo && b[j] <= hi;
  if (c0 >= 0xc2 && c0 <= 0xdf && cont(i + 1)) return [((c0 & 0x1f) << 6) | (b[i + 1] & 0x3f), 2];
  if (c0 >= 0xe0 && c0 <= 0xef) {
    const lo = c0 === 0xe0 ? 0xa0 : 0x80;
    const hi = c0 === 0xed ? 0x9f : 0xbf;
    if (cont(i + 1, lo, hi) && cont(i + 2)) {
      return [((c0 & 0x0f) << 12) | ((b[i + 1] & 0x3f) << 6) | (b[i + 2] & 0x3f), 3];
    }
  }
  if (c0 >= 0xf0 && c0 <= 0xf4) {
    const lo = c0 === 0xf0 ? 0x90 : 0x80;
    const hi = c0 === 0xf4 ? 0x8f : 0xbf;
    if (cont(i + 1, lo, hi) && cont(i + 2) && cont(i + 3)) {
      return [((c0 & 0x07) << 18) | ((b[i + 1] & 0x3f) << 12) | ((b[i + 2] & 0x3f) << 6) | (b[i + 3] & 0x3f), 4];
    }
  }
  return [0xfffd, 1];
}

/** Whether b is valid UTF-8. */
export function validUTF8(b: Uint8Array): boolean {
  for (let i = 0; i < b.length; ) {
    const [r, w] = decodeRune(b, i);
    if (r === 0xfffd && w === 1) return false;
    i += w;
  }
  return true;
}

const printable = /^[\p{L}\p{M}\p{N}\p{P}\p{S} ]$/u;
const nonASCII = /[^\x00-\x7f]/;
const surrogate = /[\ud800-\udfff]/;

/** Go's strconv.IsPrint: letters, marks, numbers, punctuation, symbols and the ASCII space. */
function isPrint(r: number): boolean {
  return printable.test(String.fromCodePoint(r));
}

function hex(n: number, width: number): string {
  return n.toString(16).padStart(width, "0");
}

function appendQuotedRune(out: string[], r: number, width: number, b: number, quote: number): void {
  if (width === 1 && r === 0xfffd) {
    out.push("\\x" + hex(b, 2));
    return;
  }
  if (r === quote || r === 0x5c) {
    out.push("\\" + String.fromCharCode(r));
    return;
  }
  if (isPrint(r)) {
    out.push(String.fromCodePoint(r));
    return;
  }
  const short: Record<number, string> = { 7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v" };
  if (short[r]) out.push(short[r]);
  else if (r < 0x20 || r === 0x7f) out.push("\\x" + hex(r, 2));
  else if (r < 0x10000) out.push("\\u" + hex(r, 4));
  else out.push("\\U" + hex(r, 8));
}

/** Go's %q of a string (strconv.Quote), of s's UTF-8 bytes (or of bytes b). */
export function goQuote(s: string | Uint8Array): string {
  const b = typeof s === "string" ? utf8Bytes(s) : s;
  const out: string[] = ['"'];
  for (let i = 0; i < b.length; ) {
    const [r, w] = decodeRune(b, i);
    appendQuotedRune(out, r, w, b[i], 0x22);
    i += w;
  }
  out.push('"');
  return out.join("");
}

/** Go's %q of a rune (strconv.QuoteRune). */
export function goQuoteRune(r: number): string {
  const out: string[] = ["'"];
  appendQuotedRune(out, r, 0, 0, 0x27);
  out.push("'");
  return out.join("");
}

/** Go's %U of a rune: U+0009. */
export function goRuneU(r: number): string {
  return "U+" + r.toString(16).toUpperCase().padStart(4, "0");
}

/** Go's time.Duration String form of a duration in nanoseconds: 5m0s, 840h0m0s, 1.5s, 0s. */
export function goDuration(ns: bigint): string {
  if (ns === 0n) return "0s";
  const neg = ns < 0n;
  let u = neg ? -ns : ns;
  let out: string;
  if (u < 1_000_000_000n) {
    // Under a second: ns, µs or ms with a fraction.
    let unit: string;
    let prec: number;
    if (u < 1000n) return (neg ? "-" : "") + u.toString() + "ns";
    if (u < 1_000_000n) {
      unit = "µs";
      prec = 3;
    } else {
      unit = "ms";
      prec = 6;
    }
    out = fraction(u, prec) + unit;
  } else {
    const secs = u / 1_000_000_000n;
    const frac = u % 1_000_000_000n;
    const h = secs / 3600n;
    const m = (secs / 60n) % 60n;
    const s = secs % 60n;
    let sec = s.toString();
    if (frac > 0n) sec += "." + frac.toString().padStart(9, "0").replace(/0+$/, "");
    out = (h > 0n ? h + "h" : "") + (h > 0n || m > 0n ? m + "m" : "") + sec + "s";
    u = 0n;
  }
  return (neg ? "-" : "") + out;
}

function fraction(v: bigint, prec: number): string {
  const p = 10n ** BigInt(prec);
  const whole = v / p;
  const frac = v % p;
  if (frac === 0n) return whole.toString();
  return whole.toString() + "." + frac.toString().padStart(prec, "0").replace(/0+$/, "");
}

/** Compares a and b by their UTF-8 bytes, as Go compares strings. */
export function compareBytes(a: string, b: string): number {
  // Without surrogates, UTF-16 code unit order is UTF-8 byte order.
  if (!surrogate.test(a) && !surrogate.test(b)) return a < b ? -1 : a > b ? 1 : 0;
  const x = utf8Bytes(a);
  const y = utf8Bytes(b);
  const n = Math.min(x.length, y.length);
  for (let i = 0; i < n; i++) {
    if (x[i] !== y[i]) return x[i] - y[i];
  }
  return x.length - y.length;
}
