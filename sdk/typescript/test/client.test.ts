// The client against a local HTTP server: batching by size and time,
// retries honouring Retry-After with the same bytes, refused events,
// overflow, flush, close and the process's exit.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath, pathToFileURL } from "node:url";
import { promisify } from "node:util";
import { Client, type MeteringEvent, MeteringError, QueueFullError, ValidationError, answer, ids, server } from "./support.js";

/** Waits until cond holds, 10 s at most. */
async function until(cond: () => boolean): Promise<void> {
  const t0 = Date.now();
  while (!cond() && Date.now() - t0 < 10_000) await new Promise((r) => setTimeout(r, 10));
}

const ev = (i: number) => ({ tenant: "acme", metric: "api_calls", value: i });

test("full batches go at once, the rest on flush; every event once", async () => {
  const s = await server((_r, res) => answer(res, 202, { accepted: 1 }));
  const c = new Client({ baseUrl: s.url, apiKey: "k", batchSize: 10, flushIntervalMs: 60_000, flushOnExit: false });
  const sent = Array.from({ length: 25 }, (_, i) => c.emit(ev(i)));
  await until(() => s.received.length >= 2);
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(s.received.length, 2, "two full batches before any flush, and nothing more");
  await c.flush();
  assert.deepEqual(s.received.map((r) => ids(r.body).length), [10, 10, 5]);
  assert.deepEqual(s.received.flatMap((r) => ids(r.body)).sort(), sent.map((e) => e.id).sort());
  const r0 = s.received[0];
  assert.equal(r0.method, "POST");
  assert.equal(r0.url, "/v1/events");
  assert.equal(r0.headers.authorization, "Bearer k");
  assert.equal(r0.headers["content-type"], "application/json");
  assert.deepEqual(c.stats(), { queued: 0, inFlight: 0, delivered: 25, retries: 0, dropped: 0, failed: 0 });
  await c.close();
  await s.close();
});

test("a partial batch goes after flushIntervalMs", async () => {
  const s = await server((_r, res) => answer(res, 202, { accepted: 1 }));
  const c = new Client({ baseUrl: s.url, apiKey: "k", flushIntervalMs: 50, flushOnExit: false });
  c.emit(ev(1));
  await until(() => s.received.length > 0);
  assert.equal(s.received.length, 1);
  await c.close();
  await s.close();
});

for (const status of [503, 429]) {
  test(`${status} with Retry-After: the same bytes again, not before Retry-After`, async () => {
    const s = await server((_r, res, n) => (n === 1 ? answer(res, status, { error: { code: "x", message: "later" } }, { "retry-after": "1" }) : answer(res, 202, { accepted: 3 })));
    const c = new Client({ baseUrl: s.url, apiKey: "k", minBackoffMs: 1, flushOnExit: false });
    for (let i = 0; i < 3; i++) c.emit(ev(i));
    await c.flush();
    assert.equal(s.received.length, 2);
    assert.equal(s.received[1].body, s.received[0].body, "resent byte for byte, same ids");
    assert.ok(s.received[1].at - s.received[0].at >= 950, `retried after ${s.received[1].at - s.received[0].at} ms`);
    assert.equal(c.stats().retries, 1);
    assert.equal(c.stats().delivered, 3);
    await c.close();
    await s.close();
  });
}

test("Retry-After as an HTTP date, and a dropped connection, are retried", async () => {
  const s = await server((_r, res, n) => {
    if (n === 1) return void res.socket?.destroy();
    if (n === 2) return answer(res, 503, "not json", { "retry-after": new Date(Date.now() + 1000).toUTCString() });
    answer(res, 202, { accepted: 1 });
  });
  const c = new Client({ baseUrl: s.url, apiKey: "k", minBackoffMs: 1, maxBackoffMs: 5, flushOnExit: false });
  c.emit(ev(1));
  await c.flush();
  assert.equal(s.received.length, 3);
  assert.equal(new Set(s.received.map((r) => r.body)).size, 1);
  assert.ok(s.received[2].at - s.received[1].at >= 1, "waited for the date");
  await c.close();
  await s.close();
});

test("events the API refuses are reported; the others are sent again", async () => {
  const s = await server((r, res, n) => {
    if (n === 1) return answer(res, 400, { errors: [{ index: 1, field: "time", message: "is older than the 840h0m0s dedup horizon" }] });
    answer(res, 202, { accepted: ids(r.body).length });
  });
  const failures: Array<[Error, MeteringEvent[]]> = [];
  const c = new Client({ baseUrl: s.url, apiKey: "k", flushOnExit: false, onError: (e, evs) => failures.push([e, evs]) });
  const sent = [0, 1, 2].map((i) => c.emit(ev(i)));
  await c.flush();
  assert.equal(failures.length, 1);
  assert.ok(failures[0][0] instanceof ValidationError);
  assert.deepEqual((failures[0][0] as ValidationError).errors, [{ index: 0, field: "time", message: "is older than the 840h0m0s dedup horizon" }]);
  assert.deepEqual(failures[0][1], [sent[1]]);
  assert.deepEqual(ids(s.received[1].body), [sent[0].id, sent[2].id]);
  await c.close();
  await s.close();
});

test("a permanent error (401) is reported, not retried; attempts run out on 503", async () => {
  const s = await server((r, res) => (r.headers.authorization === "Bearer bad" ? answer(res, 401, { error: { code: "unauthorized", message: "no" } }) : answer(res, 503, { error: { code: "unavailable", message: "down" } })));
  const failures: Error[] = [];
  const bad = new Client({ baseUrl: s.url, apiKey: "bad", flushOnExit: false, onError: (e) => failures.push(e) });
  bad.emit(ev(1));
  await bad.flush();
  assert.equal(s.received.length, 1);
  assert.ok(failures[0] instanceof MeteringError && failures[0].status === 401 && failures[0].code === "unauthorized");
  const down = new Client({ baseUrl: s.url, apiKey: "k", maxAttempts: 3, minBackoffMs: 1, maxBackoffMs: 2, flushOnExit: false, onError: (e) => failures.push(e) });
  down.emit(ev(1));
  await down.flush();
  assert.equal(s.received.length, 4);
  assert.ok(failures[1] instanceof MeteringError && failures[1].status === 503);
  assert.equal(down.stats().failed, 1);
  await bad.close();
  await down.close();
  await s.close();
});

test("send delivers now and rejects with what went wrong", async () => {
  const s = await server((_r, res, n) => (n <= 2 ? answer(res, 202, {}) : answer(res, 400, { errors: [{ index: 0, field: "value", message: "bad" }] })));
  const c = new Client({ baseUrl: s.url, apiKey: "k", batchSize: 2, flushOnExit: false });
  const evs = await c.send([ev(1), ev(2), ev(3)]);
  assert.equal(evs.length, 3);
  assert.equal(s.received.length, 2);
  await assert.rejects(c.send([ev(4)]), ValidationError);
  await c.close();
  await s.close();
});

test("overflow: reject refuses the new event, drop-oldest drops the oldest", async () => {
  const c = new Client({ baseUrl: "http://127.0.0.1:9", apiKey: "k", maxQueue: 2, batchSize: 100, flushIntervalMs: 60_000, flushOnExit: false });
  c.emit(ev(1));
  c.emit(ev(2));
  assert.throws(() => c.emit(ev(3)), QueueFullError);
  assert.equal(c.stats().queued, 2);
  const dropped: MeteringEvent[] = [];
  const d = new Client({ baseUrl: "http://127.0.0.1:9", apiKey: "k", maxQueue: 2, batchSize: 100, flushIntervalMs: 60_000, overflow: "drop-oldest", flushOnExit: false, onError: (e, evs) => e instanceof QueueFullError && dropped.push(...evs) });
  const first = d.emit(ev(1));
  d.emit(ev(2));
  d.emit(ev(3));
  assert.deepEqual(dropped, [first]);
  assert.equal(d.stats().queued, 2);
  assert.equal(d.stats().dropped, 1);
  await c.close(10);
  await d.close(10);
});

test("close flushes; emit after close throws; a close that times out reports what is left", async () => {
  const s = await server((_r, res) => answer(res, 202, {}));
  const c = new Client({ baseUrl: s.url, apiKey: "k", flushIntervalMs: 60_000, flushOnExit: false });
  c.emit(ev(1));
  await c.close();
  assert.equal(s.received.length, 1);
  assert.throws(() => c.emit(ev(2)));
  const left: MeteringEvent[] = [];
  const stuck = new Client({ baseUrl: s.url.replace(/:\d+$/, ":9"), apiKey: "k", minBackoffMs: 5000, flushOnExit: false, onError: (_e, evs) => left.push(...evs) });
  stuck.emit(ev(1));
  const t0 = Date.now();
  await stuck.close(300);
  assert.ok(Date.now() - t0 < 3000);
  assert.equal(left.length, 1);
  await s.close();
});

test("events emitted and never flushed are sent when the process's event loop empties", async () => {
  const s = await server((_r, res) => answer(res, 202, {}));
  const index = pathToFileURL(resolve(dirname(fileURLToPath(import.meta.url)), "../src/index.js")).href;
  const script = `import { Client } from ${JSON.stringify(index)};
const c = new Client({ baseUrl: ${JSON.stringify(s.url)}, apiKey: "k", flushIntervalMs: 60000 });
for (let i = 0; i < 3; i++) c.emit({ tenant: "acme", metric: "api_calls", value: i });`;
  await promisify(execFile)(process.execPath, ["--input-type=module", "-e", script], { timeout: 20_000 });
  assert.equal(s.received.length, 1);
  assert.equal(ids(s.received[0].body).length, 3);
  await s.close();
});

test("usage and quotas keep integers exact", async () => {
  const s = await server((r, res) => {
    if (r.url.startsWith("/v1/usage")) {
      return answer(res, 200, `{"tenant":"acme","metric":"tokens","window":"hour","from":"2026-11-21T00:00:00Z","to":"2026-11-22T00:00:00Z","windows":[{"start":"2026-11-21T19:00:00Z","end":"2026-11-21T20:00:00Z","value":18446744073709551617,"events":3}],"total":18446744073709551617}`);
    }
    answer(res, 200, `{"tenant":"acme","plan":"free","quotas":[{"metric":"api_calls","meter":"api_calls","filter":{},"per_group":false,"limit":null,"used":9007199254740993,"remaining":null,"period_start":"2026-11-01T00:00:00Z","period_end":"2026-12-01T00:00:00Z","state":"ok","hard":false,"burst_percent":20}]}`);
  });
  const c = new Client({ baseUrl: s.url, apiKey: "k", flushOnExit: false });
  const u = await c.usage({ tenant: "acme", metric: "tokens", window: "hour", from: new Date("2026-11-21T00:00:00Z") });
  assert.equal(u.total, 18446744073709551617n);
  assert.equal(u.windows[0].value, 18446744073709551617n);
  assert.equal(u.windows[0].events, 3n);
  assert.equal(s.received[0].url, "/v1/usage?tenant=acme&metric=tokens&window=hour&from=2026-11-21T00%3A00%3A00.000Z");
  const q = await c.quotas("acme");
  assert.equal(q.quotas[0].used, 9007199254740993n);
  assert.equal(q.quotas[0].limit, null);
  assert.equal(q.quotas[0].burstPercent, 20);
  assert.equal(s.received[1].url, "/v1/quotas/acme");
  await c.close();
  await s.close();
});

test("a batch the API finds too large (413) is halved until it fits", async () => {
  const s = await server((r, res) => (ids(r.body).length > 2 ? answer(res, 413, { error: { code: "batch_too_large", message: "too many" } }) : answer(res, 202, {})));
  const c = new Client({ baseUrl: s.url, apiKey: "k", batchSize: 8, flushOnExit: false });
  const sent = Array.from({ length: 8 }, (_, i) => c.emit(ev(i)));
  await c.flush();
  const accepted = s.received.filter((r) => ids(r.body).length <= 2).flatMap((r) => ids(r.body));
  assert.deepEqual(accepted.sort(), sent.map((e) => e.id).sort());
  assert.equal(c.stats().delivered, 8);
  await c.close();
  await s.close();
});

test("emit refuses an invalid event with every field error, and queues nothing", () => {
  const c = new Client({ baseUrl: "http://127.0.0.1:9", apiKey: "k", flushOnExit: false });
  assert.throws(
    () => c.emit({ tenant: "..", metric: "a b", value: 1.5 }),
    (e: unknown) =>
      e instanceof ValidationError &&
      // As the API orders them: what cannot be read as its type, then the rules.
      e.errors.map((f) => f.field).join() === "value,tenant,metric" &&
      e.message.startsWith("3 invalid fields: event 0: value: must be an integer, got 1.5; count in the smallest unit (bytes, milliseconds, tokens); event 0: tenant: must not be \"..\""),
  );
  assert.equal(c.stats().queued, 0);
  void c.close(10);
});
