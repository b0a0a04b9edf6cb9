// The contract's building blocks on their own: Go's quoting and durations, RFC
// 3339 as Go parses it, UUIDv7 ids, strings that are not UTF-8, the
// strict JSON reader.

import assert from "node:assert/strict";
import { test } from "node:test";
import { checkEvent, checkText, goDurationForTest, goQuoteForTest, JsonError, JsonNumber as JsonNumberForTest, JsonObject as JsonObjectForTest, newId, parseEvent, parseJSON, parseRFC3339, formatRFC3339Nano, toEvent, ValidationError } from "./support.js";

test("Go's %q of strings and bytes", () => {
  const bytes = Uint8Array.from([...Buffer.from("a\x00b\u0085\u00a0\u2028"), 0xff, ...Buffer.from("😀\t\"\\'")]);
  assert.equal(goQuoteForTest(bytes), String.raw`"a\x00b\u0085\u00a0\u2028\xff😀\t\"\\'"`);
  assert.equal(goQuoteForTest("\x07\x0b\x7f"), String.raw`"\a\v\x7f"`);
  assert.equal(goQuoteForTest("\u{e0001}"), String.raw`"\U000e0001"`);
});

test("Go's Duration.String", () => {
  const cases: Array<[bigint, string]> = [
    [0n, "0s"],
    [300n * 10n ** 9n, "5m0s"],
    [35n * 24n * 3600n * 10n ** 9n, "840h0m0s"],
    [5400n * 10n ** 9n, "1h30m0s"],
    [1500n * 10n ** 6n, "1.5s"],
    [1500n * 10n ** 3n, "1.5ms"],
    [1500n, "1.5µs"],
    [999n, "999ns"],
  ];
  for (const [ns, want] of cases) assert.equal(goDurationForTest(ns), want);
});

test("RFC 3339 as Go's time.Parse(time.RFC3339Nano) reads it", () => {
  const ok: Array<[string, string]> = [
    ["2026-11-21T19:00:00.1234567891Z", "2026-11-21T19:00:00.123456789Z"],
    ["2026-11-21T19:00:00+24:00", "2026-11-20T19:00:00Z"],
    ["2026-11-21T19:00:00+02:60", "2026-11-21T16:00:00Z"],
    ["2026-11-21T19:00:00,5Z", "2026-11-21T19:00:00.5Z"],
    ["2026-11-21T9:00:00Z", "2026-11-21T09:00:00Z"],
    ["0000-01-01T00:00:00Z", "0000-01-01T00:00:00Z"],
    ["2024-02-29T00:00:00Z", "2024-02-29T00:00:00Z"],
    ["2026-11-21T19:00:00.5+01:30", "2026-11-21T17:30:00.5Z"],
  ];
  for (const [s, want] of ok) assert.equal(formatRFC3339Nano(parseRFC3339(s)!), want, s);
  for (const s of [
    "2026-11-21t19:00:00z",
    "2026-11-21T23:59:60Z",
    "2026-02-30T00:00:00Z",
    "2026-11-21T24:00:00Z",
    "2026-11-21T19:00:00.Z",
    "2026-11-21 19:00:00Z",
    "2026-11-21T19:00:00+0200",
    "2026-11-21T19:00Z",
    "+2026-11-21T19:00:00Z",
    "2026-1-21T19:00:00Z",
    "2026-11-21T19:00:00ZZ",
    "2026-11-21T19:00:00+25:00",
  ]) {
    assert.equal(parseRFC3339(s), undefined, s);
  }
});

test("newId makes increasing UUIDv7s", () => {
  const ids = Array.from({ length: 5000 }, newId);
  for (const id of ids) assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  const sorted = [...ids].sort();
  assert.deepEqual(ids, sorted);
  assert.equal(new Set(ids).size, ids.length);
  const ms = parseInt(ids[0].replace(/-/g, "").slice(0, 12), 16);
  assert.ok(Math.abs(ms - Date.now()) < 60_000);
});

test("a lone surrogate is not UTF-8, as invalid bytes are not in Go", () => {
  const now = () => new Date("2026-11-21T19:00:00Z");
  const { errors } = checkEvent(
    { id: "e1", tenant: "a\ud800", metric: "m", value: 1, time: "2026-11-21T18:59:00Z", source: "x\udc00", properties: { "k\ud800": "v", k: "\ud800" } },
    0,
    { now },
  );
  assert.deepEqual(
    errors.map((e) => `${e.field}: ${e.message}`),
    [
      "tenant: may contain only A-Z a-z 0-9 . _ : -; found '\uFFFD' at byte 1",
      "source: must be valid UTF-8",
      "properties.k: must be valid UTF-8",
      String.raw`properties: key "k\xed\xa0\x80" must be valid UTF-8`,
    ],
  );
  assert.equal(checkText("ok \u{1F642}"), "");
  assert.equal(checkText("\ud83d"), "must be valid UTF-8");
});

test("values: numbers must be safe integers, bigints are exact", () => {
  const now = () => new Date("2026-11-21T19:00:00Z");
  const base = { id: "e1", tenant: "acme", metric: "m", time: "2026-11-21T18:59:00Z" };
  const msg = (value: unknown) => checkEvent({ ...base, value }, 0, { now }).errors.map((e) => e.message);
  assert.deepEqual(msg(1.5), ["must be an integer, got 1.5; count in the smallest unit (bytes, milliseconds, tokens)"]);
  assert.deepEqual(msg(-2), ["must be at least 0, got -2"]);
  assert.deepEqual(msg("1"), ["must be an integer, got a string"]);
  assert.deepEqual(msg(undefined), ["is required (an integer count in the smallest unit)"]);
  assert.match(msg(2 ** 53)[0], /^must be a safe integer/);
  assert.deepEqual(msg(2n ** 53n), []);
  assert.deepEqual(msg(2n ** 53n + 1n), ["must be at most 2^53 (9007199254740992), got 9007199254740993"]);
  assert.deepEqual(msg(Number.MAX_SAFE_INTEGER), []);
});

test("wrong types are reported once, as such", () => {
  const now = () => new Date("2026-11-21T19:00:00Z");
  const { errors } = checkEvent({ id: 7, tenant: "acme", metric: null, value: 1, time: 5, properties: { a: 1, b: null } }, 0, { now });
  assert.deepEqual(
    errors.map((e) => `${e.field}: ${e.message}`),
    [
      "id: must be a string, got a number",
      "time: must be a string, got a number",
      "properties.a: must be a string, got a number",
      "properties.b: must be a string, got null",
      "metric: is required (1-128 characters of A-Z a-z 0-9 . _ : -)",
    ],
  );
});

test("toEvent fills id and time, keeps a Date to the millisecond", () => {
  const ev = toEvent({ tenant: "acme", metric: "api_calls", value: 3n, properties: new Map([["b", "2"], ["a", "1"]]) });
  assert.match(ev.id, /^[0-9a-f-]{36}$/);
  assert.ok(Math.abs(Date.parse(ev.time) - Date.now()) < 5000);
  const d = toEvent({ id: "x", tenant: "acme", metric: "m", value: 1, time: new Date(Date.UTC(2026, 10, 21, 19, 0, 0, 120)) }, { now: () => new Date("2026-11-21T19:00:00Z") });
  assert.equal(d.time, "2026-11-21T19:00:00.12Z");
  assert.throws(() => toEvent({ tenant: "", metric: "m", value: 1 }), ValidationError);
});

test("the JSON reader keeps numbers exact, finds duplicates in any case, bounds the document", () => {
  const { value, duplicates } = parseJSON('{"a":18446744073709551616,"A":1,"b":{"k":1,"\\u212a":2}}');
  assert.equal((value as any).get("a").toBigInt(), 18446744073709551616n);
  assert.deepEqual(
    duplicates.map((d) => d.path),
    ["A", "b.\u212a"],
  );
  for (const [doc, code] of [
    ["[[[[[[[[[1]]]]]]]]]", "too_deep"],
    ['"' + "x".repeat(8193) + '"', "too_long"],
    ["[" + "0,".repeat(1000) + "0]", "too_many_elements"],
    ["{" + Array.from({ length: 65 }, (_, i) => `"k${i}":0`).join(",") + "}", "too_many_keys"],
    ["{", "malformed_body"],
    ["1 2", "malformed_body"],
    ['"\u0001"', "malformed_body"],
  ] as const) {
    assert.throws(() => parseJSON(doc), (e: unknown) => e instanceof JsonError && e.code === code, doc);
  }
  assert.throws(() => parseEvent("[]"), ValidationError);
});

test("the JSON reader agrees with JSON.parse on random documents", () => {
  let seed = 7;
  const rand = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  const strs = ["", "a", "é", "日本", "🙂", '"', "\\", "\n", "\u0000", "\u2028", "k\u212a"];
  const gen = (depth: number): unknown => {
    switch (rand(depth > 4 ? 4 : 7)) {
      case 0:
        return rand(2) === 0;
      case 1:
        return null;
      case 2:
        return [0, -1, 1.5, 1e21, 123456789, -0.25][rand(6)];
      case 3:
        return strs[rand(strs.length)] + strs[rand(strs.length)];
      case 4:
      case 5:
        return Array.from({ length: rand(4) }, () => gen(depth + 1));
      default: {
        const o: Record<string, unknown> = {};
        for (let i = rand(4); i > 0; i--) o["k" + i + strs[rand(strs.length)]] = gen(depth + 1);
        return o;
      }
    }
  };
  const plain = (v: unknown): unknown => {
    if (v instanceof JsonNumberForTest) return Number(v.raw);
    if (Array.isArray(v)) return v.map(plain);
    if (v instanceof JsonObjectForTest) return Object.fromEntries(v.members.map(([k, x]) => [k, plain(x)]));
    return v;
  };
  for (let i = 0; i < 2000; i++) {
    const doc = JSON.stringify(gen(0), null, rand(2) === 0 ? undefined : 1);
    assert.deepEqual(plain(parseJSON(doc).value), JSON.parse(doc), doc);
  }
});
