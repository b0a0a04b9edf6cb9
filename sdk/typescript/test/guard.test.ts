// Quota enforcement and token buckets, alone and in Express and Fastify.

import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import express from "express";
import Fastify from "fastify";
import { type Emitter, Enforcer, type MeteringEvent, QuotaGuard, RateLimiter, answer, expressMeter, expressQuotaGuard, fastifyMeter, fastifyQuotaGuard, recordTokens, server, toEvent } from "./support.js";

const periodEnd = "2026-12-01T00:00:00Z";
const clock = Date.parse("2026-11-21T19:00:00Z");

/** A quota API: tenant "blocked" has api_calls blocked, "tokens-blocked" tokens, "gone" is unknown, "broken" fails. */
async function quotaAPI() {
  return server((r, res) => {
    const tenant = decodeURIComponent(r.url.slice("/v1/quotas/".length));
    const q = (metric: string, state: string) => ({ metric, meter: metric, filter: {}, per_group: false, limit: 10, used: 20, remaining: 0, period_start: "2026-11-01T00:00:00Z", period_end: periodEnd, state, hard: true, burst_percent: 0 });
    if (tenant === "gone") return answer(res, 404, { error: { code: "not_found", message: "no such tenant" } });
    if (tenant === "broken") return answer(res, 500, { error: { code: "internal", message: "boom" } });
    if (tenant === "blocked") return answer(res, 200, { tenant, plan: "free", quotas: [q("api_calls", "blocked"), q("tokens", "ok")] });
    if (tenant === "tokens-blocked") return answer(res, 200, { tenant, plan: "free", quotas: [q("api_calls", "warning"), q("tokens", "blocked")] });
    answer(res, 200, { tenant, plan: "free", quotas: [q("api_calls", "exceeded")] });
  });
}

test("QuotaGuard: blocked until the period ends, cached for the TTL, one read in flight", async () => {
  const api = await quotaAPI();
  let now = clock;
  const g = new QuotaGuard({ baseUrl: api.url, apiKey: "viewer", now: () => now });
  const d = await g.check("blocked");
  assert.deepEqual(d, { allowed: false, reason: "quota", metric: "api_calls", retryAfterMs: Date.parse(periodEnd) - clock });
  assert.equal(api.received[0].headers.authorization, "Bearer viewer");
  assert.equal((await g.check("ok")).allowed, true, "exceeded is not blocked");
  assert.equal((await g.check("gone")).allowed, true, "an unknown tenant has no quotas");
  await Promise.all([g.check("x"), g.check("x"), g.check("x")]);
  assert.equal(api.received.filter((r) => r.url === "/v1/quotas/x").length, 1, "one read in flight per tenant");
  await g.check("blocked");
  assert.equal(api.received.filter((r) => r.url === "/v1/quotas/blocked").length, 1, "cached");
  now += 5001;
  await g.check("blocked");
  assert.equal(api.received.filter((r) => r.url === "/v1/quotas/blocked").length, 2, "read again after the TTL");
  now = Date.parse(periodEnd);
  g.forget();
  assert.equal((await g.check("blocked")).allowed, true, "free again when the period ends");
  await api.close();
});

test("QuotaGuard: only the configured metrics; fail open or closed", async () => {
  const api = await quotaAPI();
  const onlyCalls = new QuotaGuard({ baseUrl: api.url, apiKey: "k", metrics: ["api_calls"], now: () => clock });
  assert.equal((await onlyCalls.check("tokens-blocked")).allowed, true);
  const errors: string[] = [];
  const open = new QuotaGuard({ baseUrl: api.url, apiKey: "k", onError: (t, e) => errors.push(`${t}: ${e.message}`) });
  assert.deepEqual(await open.check("broken"), { allowed: true, retryAfterMs: 0 });
  assert.match(errors[0], /^broken: metering: reading quotas of broken: HTTP 500 internal: boom$/);
  const closed = new QuotaGuard({ baseUrl: "http://127.0.0.1:9", apiKey: "k", failClosed: true });
  assert.deepEqual(await closed.check("any"), { allowed: false, reason: "unavailable", retryAfterMs: 1000 });
  await api.close();
});

test("RateLimiter: burst, then one token per 1/rate seconds", () => {
  let now = 0;
  const r = new RateLimiter({ ratePerSecond: 2, burst: 3 }, 2, () => now);
  assert.deepEqual([r.take("a"), r.take("a"), r.take("a")], [0, 0, 0]);
  assert.equal(r.take("a"), 500);
  now += 250;
  assert.equal(r.take("a"), 250, "a refusal takes nothing");
  now += 250;
  assert.equal(r.take("a"), 0);
  assert.equal(r.take("b"), 0, "buckets are per key");
  r.take("c"); // evicts a, the least recently used
  assert.equal(r.take("a"), 0, "an evicted bucket starts full");
  assert.throws(() => new RateLimiter({ ratePerSecond: 0 }));
});

/** An Emitter that keeps what it is given. */
function recorder(): Emitter & { events: MeteringEvent[] } {
  const events: MeteringEvent[] = [];
  return { events, emit: (ev) => { const e = toEvent(ev); events.push(e); return e; } };
}

test("Express: 429 with Retry-After for a blocked tenant, per-user and per-IP buckets, requests and tokens metered", async () => {
  const api = await quotaAPI();
  const rec = recorder();
  const app = express();
  const enforcer = new Enforcer<express.Request>({
    tenant: (req) => req.get("x-tenant"),
    quota: { baseUrl: api.url, apiKey: "viewer", now: () => clock },
    perUser: { key: (req) => req.get("x-user"), ratePerSecond: 0.001, burst: 2 },
    perIp: { ratePerSecond: 0.001, burst: 50 },
    now: () => clock,
  });
  app.use(expressMeter<express.Request, express.Response>({ client: rec, tenant: (req) => req.get("x-tenant"), source: "chat-svc" }));
  app.use(expressQuotaGuard(enforcer));
  app.post("/v1/chat/:id", (_req, res) => {
    recordTokens(res, { model: "gpt-4o", input: 120, output: 30n });
    res.json({ ok: true });
  });
  const srv = app.listen(0, "127.0.0.1");
  await new Promise((r) => srv.once("listening", r));
  const base = `http://127.0.0.1:${(srv.address() as AddressInfo).port}`;
  const post = (headers: Record<string, string>) => fetch(`${base}/v1/chat/7`, { method: "POST", headers });

  const blocked = await post({ "x-tenant": "blocked" });
  assert.equal(blocked.status, 429);
  assert.equal(blocked.headers.get("retry-after"), String((Date.parse(periodEnd) - clock) / 1000));
  assert.deepEqual(await blocked.json(), { error: { code: "quota_exceeded", message: `the api_calls quota of this account is used up until ${periodEnd}` } });

  const ok = await post({ "x-tenant": "acme", "x-user": "u1" });
  assert.equal(ok.status, 200);
  await ok.arrayBuffer();
  assert.equal((await post({ "x-tenant": "acme", "x-user": "u1" })).status, 200);
  const limited = await post({ "x-tenant": "acme", "x-user": "u1" });
  assert.equal(limited.status, 429);
  assert.equal(limited.headers.get("retry-after"), "1000");
  assert.deepEqual(await limited.json(), { error: { code: "rate_limited", message: "too many requests; slow down" } });
  assert.equal((await post({ "x-tenant": "acme", "x-user": "u2" })).status, 200, "another user has its own bucket");

  await new Promise((r) => setTimeout(r, 50));
  const calls = rec.events.filter((e) => e.metric === "api_calls");
  assert.deepEqual(
    calls.map((e) => [e.tenant, e.properties?.status, e.properties?.route, e.properties?.method, e.source]),
    [
      ["blocked", "429", "unmatched", "POST", "chat-svc"],
      ["acme", "200", "/v1/chat/:id", "POST", "chat-svc"],
      ["acme", "200", "/v1/chat/:id", "POST", "chat-svc"],
      ["acme", "429", "unmatched", "POST", "chat-svc"],
      ["acme", "200", "/v1/chat/:id", "POST", "chat-svc"],
    ],
  );
  const tokens = rec.events.filter((e) => e.metric === "tokens");
  assert.equal(tokens.length, 6);
  assert.deepEqual(tokens.slice(0, 2).map((e) => [e.value, e.properties]), [
    [120n, { kind: "input", model: "gpt-4o" }],
    [30n, { kind: "output", model: "gpt-4o" }],
  ]);

  // The per-IP bucket: 50 requests in all from this address, then 429.
  let status = 0;
  for (let i = 0; i < 50 && status !== 429; i++) status = (await post({})).status;
  assert.equal(status, 429);
  srv.closeAllConnections();
  srv.close();
  await api.close();
});

test("Express: fail closed answers 503 quota_unavailable", async () => {
  const app = express();
  app.use(expressQuotaGuard({ tenant: () => "acme", quota: { baseUrl: "http://127.0.0.1:9", apiKey: "k", failClosed: true } }));
  app.get("/", (_req, res) => res.send("ok"));
  const srv = app.listen(0, "127.0.0.1");
  await new Promise((r) => srv.once("listening", r));
  const res = await fetch(`http://127.0.0.1:${(srv.address() as AddressInfo).port}/`);
  assert.equal(res.status, 503);
  assert.equal(res.headers.get("retry-after"), "1");
  assert.equal(((await res.json()) as { error: { code: string } }).error.code, "quota_unavailable");
  srv.closeAllConnections();
  srv.close();
});

test("Fastify: the same enforcement and metering as hooks", async () => {
  const api = await quotaAPI();
  const rec = recorder();
  const app = Fastify();
  const tenant = (req: { headers: Record<string, unknown> }) => req.headers["x-tenant"] as string | undefined;
  app.addHook("onRequest", fastifyQuotaGuard({ tenant, quota: { baseUrl: api.url, apiKey: "viewer", now: () => clock }, perTenant: { ratePerSecond: 0.001, burst: 2 }, now: () => clock }));
  app.addHook("onResponse", fastifyMeter({ client: rec, tenant }));
  app.get("/v1/complete", async (_req, reply) => {
    recordTokens(reply, { model: "m1", input: 5, output: 0 });
    return { ok: true };
  });
  const blocked = await app.inject({ method: "GET", url: "/v1/complete", headers: { "x-tenant": "blocked" } });
  assert.equal(blocked.statusCode, 429);
  assert.equal(blocked.headers["retry-after"], String((Date.parse(periodEnd) - clock) / 1000));
  assert.equal(blocked.json().error.code, "quota_exceeded");
  assert.equal((await app.inject({ method: "GET", url: "/v1/complete", headers: { "x-tenant": "acme" } })).statusCode, 200);
  assert.equal((await app.inject({ method: "GET", url: "/v1/complete", headers: { "x-tenant": "acme" } })).statusCode, 200);
  const limited = await app.inject({ method: "GET", url: "/v1/complete", headers: { "x-tenant": "acme" } });
  assert.equal(limited.statusCode, 429);
  assert.equal(limited.json().error.code, "rate_limited");
  assert.equal((await app.inject({ method: "GET", url: "/v1/complete" })).statusCode, 200, "no tenant: not checked");
  assert.deepEqual(
    rec.events.map((e) => [e.tenant, e.metric, e.value, e.properties?.status ?? e.properties?.kind, e.properties?.route ?? e.properties?.model]),
    [
      ["blocked", "api_calls", 1n, "429", "/v1/complete"],
      ["acme", "api_calls", 1n, "200", "/v1/complete"],
      ["acme", "tokens", 5n, "input", "m1"],
      ["acme", "api_calls", 1n, "200", "/v1/complete"],
      ["acme", "tokens", 5n, "input", "m1"],
      ["acme", "api_calls", 1n, "429", "/v1/complete"],
    ],
  );
  await app.close();
  await api.close();
});
