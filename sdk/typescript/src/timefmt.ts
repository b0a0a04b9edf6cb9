// Event times as exact nanoseconds since the Unix epoch (a bigint), parsed
// and written as Go's time package does with time.RFC3339Nano, so that an
// event's canonical JSON is byte-identical to the Go SDK's and the API's.

const NS = 1_000_000_000n;

function daysIn(month: number, year: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
}

/** Days from 1970-01-01 to the proleptic Gregorian date y-m-d. */
function daysFromCivil(y: number, m: number, d: number): number {
  y -= m <= 2 ? 1 : 0;
  const era = Math.floor(y / 400);
  const yoe = y - era * 400;
  const doy = Math.floor((153 * (m + (m > 2 ? -3 : 9)) + 2) / 5) + d - 1;
  const doe = yoe * 365 + Math.floor(yoe / 4) - Math.floor(yoe / 100) + doy;
  return era * 146097 + doe - 719468;
}

function civilFromDays(z: number): [number, number, number] {
  z += 719468;
  const era = Math.floor(z / 146097);
  const doe = z - era * 146097;
  const yoe = Math.floor((doe - Math.floor(doe / 1460) + Math.floor(doe / 36524) - Math.floor(doe / 146096)) / 365);
  const doy = doe - (365 * yoe + Math.floor(yoe / 4) - Math.floor(yoe / 100));
  const mp = Math.floor((5 * doy + 2) / 153);
  const d = doy - Math.floor((153 * mp + 2) / 5) + 1;
  const m = mp + (mp < 10 ? 3 : -9);
  return [yoe + era * 400 + (m <= 2 ? 1 : 0), m, d];
}

// Go's time.Parse(time.RFC3339Nano, s): a four-digit year, two-digit
// month, day, minute and second, a one- or two-digit hour, an optional
// fraction after '.' or ',' (digits past the ninth dropped), then Z or an
// offset ±hh:mm of at most 24 hours and 60 minutes.
const rfc3339 = /^(\d{4})-(\d{2})-(\d{2})T(\d{1,2}):(\d{2}):(\d{2})(?:[.,](\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))$/;

/** Parses s as Go's time.Parse(time.RFC3339Nano) does; undefined when Go refuses it. */
export function parseRFC3339(s: string): bigint | undefined {
  const m = rfc3339.exec(s);
  if (!m) return undefined;
  const [year, month, day, hour, min, sec] = m.slice(1, 7).map(Number);
  if (month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || min > 59 || sec > 59) {
    return undefined;
  }
  let offset = 0;
  if (!m[8]) {
    const oh = Number(m[10]);
    const om = Number(m[11]);
    if (oh > 24 || om > 60) return undefined;
    offset = (oh * 60 + om) * 60 * (m[9] === "-" ? -1 : 1);
  }
  const frac = m[7] ? BigInt(m[7].slice(0, 9).padEnd(9, "0")) : 0n;
  const secs = BigInt(daysFromCivil(year, month, day)) * 86400n + BigInt(hour * 3600 + min * 60 + sec - offset);
  return secs * NS + frac;
}

/** Nanoseconds since the epoch of a Date (whole milliseconds). */
export function dateNanos(d: Date): bigint {
  return BigInt(d.getTime()) * 1_000_000n;
}

/** The current time in nanoseconds since the epoch, with millisecond precision. */
export function nowNanos(): bigint {
  return BigInt(Date.now()) * 1_000_000n;
}

function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return a % b !== 0n && (a < 0n) !== (b < 0n) ? q - 1n : q;
}

/**
 * Formats ns as Go's t.UTC().Format(time.RFC3339Nano): UTC, only the
 * significant digits of the fraction, a Z.
 */
export function formatRFC3339Nano(ns: bigint): string {
  const secs = floorDiv(ns, NS);
  const frac = ns - secs * NS;
  const days = floorDiv(secs, 86400n);
  const rem = Number(secs - days * 86400n);
  const [y, mo, d] = civilFromDays(Number(days));
  const p2 = (n: number) => String(n).padStart(2, "0");
  const year = y < 0 ? "-" + String(-y).padStart(3, "0") : String(y).padStart(4, "0");
  let out = `${year}-${p2(mo)}-${p2(d)}T${p2(Math.floor(rem / 3600))}:${p2(Math.floor(rem / 60) % 60)}:${p2(rem % 60)}`;
  if (frac > 0n) out += "." + frac.toString().padStart(9, "0").replace(/0+$/, "");
  return out + "Z";
}

/** Whole seconds since the epoch (Go's t.Unix()), rounded down. */
export function unixSeconds(ns: bigint): bigint {
  return floorDiv(ns, NS);
}
