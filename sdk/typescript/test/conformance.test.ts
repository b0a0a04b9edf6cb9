// Every shared conformance vector: events.json (validating and encoding
// one event built from typed fields) and decode.json's single-object
// application/json bodies (reading one event from JSON text).

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { BodyError, type EventInput, JsonNumber, JsonObject, type JsonValue, ValidationError, canonicalJSON, checkEvent, parseEvent, parseJSON } from "../src/index.js";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../../..");
const now = () => new Date("2026-11-21T19:00:00Z");
const big = { maxDepth: 16, maxStringBytes: 1 << 20, maxKeys: 1 << 16, maxElements: 1 << 20 };

function vectors(name: string): JsonObject[] {
  const path = resolve(root, "testdata/conformance", name);
  const v = parseJSON(readFileSync(path), big).value;
  assert.ok(Array.isArray(v) && v.length > 0, `${path}: want a non-empty array`);
  return v as JsonObject[];
}

/** The vector's event as a program would build it: value exact (a bigint), or a number when asNumber and safe. */
function input(o: JsonObject, asNumber: boolean): EventInput {
  const ev: Record<string, unknown> = {};
  for (const [k, v] of o.members) {
    if (v instanceof JsonNumber) {
      const b = v.toBigInt();
      ev[k] = asNumber && Number.isSafeInteger(Number(b)) ? Number(b) : b;
    } else if (v instanceof JsonObject) {
      const props: Record<string, string> = {};
      for (const [pk, pv] of v.members) Object.defineProperty(props, pk, { value: pv, enumerable: true });
      ev[k] = props;
    } else ev[k] = v;
  }
  return ev as unknown as EventInput;
}

function str(v: JsonValue | undefined): string {
  assert.equal(typeof v, "string");
  return v as string;
}

test("events.json: every vector validates and encodes as Go does", async (t) => {
  const vs = vectors("events.json");
  for (const v of vs) {
    const name = str(v.get("name"));
    const want = v.get("want") as JsonObject;
    for (const asNumber of [false, true]) {
      await t.test(`${name}${asNumber ? " (value as a number)" : ""}`, () => {
        const { event, errors } = checkEvent(input(v.get("event") as JsonObject, asNumber), 0, { now });
        if (want.has("canonical")) {
          assert.deepEqual(errors, []);
          assert.equal(canonicalJSON(event!), str(want.get("canonical")));
          return;
        }
        const wantErrs = (want.get("errors") as JsonObject[]).map((e) => `${str(e.get("field"))}: ${str(e.get("message"))}`).sort();
        const got = errors.map((e) => `${e.field}: ${e.message}`).sort();
        if (asNumber && got.length === 1 && got[0].startsWith("value: must be a safe integer")) return; // 2^53 and beyond need a bigint
        assert.deepEqual(got, wantErrs);
      });
    }
  }
});

test("decode.json: single-object application/json bodies read as the API reads them", async (t) => {
  let n = 0;
  for (const v of vectors("decode.json")) {
    const body = str(v.get("body"));
    if (v.get("content_type") !== "application/json" || !body.startsWith("{")) continue;
    n++;
    const want = v.get("want") as JsonObject;
    await t.test(str(v.get("name")), () => {
      let got: string | Error;
      try {
        got = canonicalJSON(parseEvent(body, { now }));
      } catch (e) {
        got = e as Error;
      }
      if (want.has("events")) {
        assert.equal(got, str((want.get("events") as JsonValue[])[0]));
      } else if (want.has("body_error")) {
        assert.ok(got instanceof BodyError, `want body error ${want.get("body_error")}, got ${got}`);
        assert.equal(got.code, want.get("body_error"));
      } else {
        assert.ok(got instanceof ValidationError, `want field errors, got ${got}`);
        const fields = [...new Set(got.errors.map((e) => `${e.index}:${e.field}`))].sort();
        const wantFields = [...new Set((want.get("errors") as JsonObject[]).map((e) => `${(e.get("index") as JsonNumber).raw}:${str(e.get("field"))}`))].sort();
        assert.deepEqual(fields, wantFields, got.message);
      }
    });
  }
  assert.ok(n >= 30, `only ${n} single-object vectors`);
});
