// End to end against the pipeline of tools/sdkstack (METERING_SDKSTACK
// holds its JSON line; scripts/sdk-typescript.sh starts it): events sent
// through the fault proxy while it answers storms of 503 and 429, before
// and after ingest accepted them, each count exactly once; values past
// 2^53 read back exactly; a blocked tenant is refused by the Express
// guard; the example app meters its requests and tokens.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import { dirname, resolve } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import express from "express";
import { Client, type MeteringEvent, type Usage, expressQuotaGuard } from "../src/index.js";

interface Stack {
  url: string;
  direct_url: string;
  admin_key: string;
  control_url: string;
}

function stack(): Stack {
  const raw = process.env.METERING_SDKSTACK;
  if (!raw) throw new Error("METERING_SDKSTACK is not set: run scripts/sdk-typescript.sh, which starts tools/sdkstack");
  return JSON.parse(raw) as Stack;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function storm(s: Stack, count: number, status: number, mode: "before" | "after", retryAfter = 1): Promise<void> {
  const res = await fetch(`${s.control_url}/storm?count=${count}&status=${status}&mode=${mode}&retry_after=${retryAfter}`, { method: "POST" });
  assert.equal(res.status, 200, await res.text());
}

async function stats(s: Stack): Promise<Record<string, number>> {
  const res = await fetch(`${s.control_url}/stats`);
  return (await res.json()) as Record<string, number>;
}

/** Polls usage through the SDK until the aggregator counted events events (2 minutes at most). */
async function counted(c: Client, tenant: string, metric: string, events: bigint): Promise<Usage> {
  const now = Date.now();
  const deadline = now + 120_000;
  let u: Usage;
  do {
    u = await c.usage({ tenant, metric, window: "hour", from: new Date(now - 3 * 3600_000), to: new Date(now + 3600_000) });
    if (u.windows.reduce((n, w) => n + w.events, 0n) >= events) return u;
    await sleep(500);
  } while (Date.now() < deadline);
  return u;
}

test("2,000 events through storms of 503 and 429, before and after ingest, each counted exactly once", async () => {
  const s = stack();
  const tenant = "sdk-ts-" + randomBytes(4).toString("hex");
  const before = await stats(s);
  await storm(s, 2, 503, "before");
  await storm(s, 2, 503, "after");
  await storm(s, 2, 429, "before");
  await storm(s, 2, 429, "after");
  const failures: Array<[Error, MeteringEvent[]]> = [];
  const c = new Client({ baseUrl: s.url, apiKey: s.admin_key, batchSize: 50, flushIntervalMs: 200, maxAttempts: 20, minBackoffMs: 50, flushOnExit: false, onError: (e, evs) => failures.push([e, evs]) });
  const n = 2000;
  let total = 0n;
  const ids = new Set<string>();
  for (let i = 0; i < n; i++) {
    const value = BigInt(((i * 7919) % 1000) + 1);
    total += value;
    ids.add(c.emit({ tenant, metric: "api_calls", value, source: "sdk-ts-e2e", properties: { batch: String(i % 3) } }).id);
    if (i % 100 === 99) await sleep(20); // let batches go out between the storms
    if (i === 700) await storm(s, 3, 503, "after");
    if (i === 1400) {
      await storm(s, 3, 429, "after", 2);
      await storm(s, 1, 503, "before");
    }
  }
  assert.equal(ids.size, n);
  await c.flush();
  assert.deepEqual(failures, []);
  const st = c.stats();
  assert.equal(st.delivered, n);
  assert.equal(st.failed, 0);
  assert.ok(st.retries >= 15, `retries ${st.retries}`);
  const after = await stats(s);
  assert.equal(after.faulted_after - before.faulted_after, 10);
  assert.equal(after.faulted_before - before.faulted_before, 5);
  assert.equal(after.forwarded_accepted - before.forwarded_accepted, 10, "ten accepted requests were answered with a fault and resent");

  const u = await counted(c, tenant, "api_calls", BigInt(n));
  assert.equal(u.windows.reduce((x, w) => x + w.events, 0n), BigInt(n), "every event counted once");
  assert.equal(u.total, total);
  assert.equal(u.windows.reduce((x, w) => x + w.value, 0n), total);
  await c.close();
});

test("values up to 2^53 go out and come back exact, past 2^53 in the total", async () => {
  const s = stack();
  const tenant = "sdk-ts-big-" + randomBytes(4).toString("hex");
  const c = new Client({ baseUrl: s.url, apiKey: s.admin_key, flushOnExit: false });
  await c.send([
    { tenant, metric: "bytes", value: 2n ** 53n },
    { tenant, metric: "bytes", value: 2n ** 53n },
    { tenant, metric: "bytes", value: 3 },
  ]);
  const u = await counted(c, tenant, "bytes", 3n);
  assert.equal(u.total, 2n ** 54n + 3n);
  await c.close();
});

test("the Express guard refuses a tenant once its hard quota is blocked", async () => {
  const s = stack();
  const suffix = randomBytes(4).toString("hex");
  const plan = "sdk-ts-plan-" + suffix;
  const tenant = "sdk-ts-q-" + suffix;
  const admin = { authorization: "Bearer " + s.admin_key, "content-type": "application/json" };
  let res = await fetch(`${s.direct_url}/v1/admin/plans/${plan}`, {
    method: "PUT",
    headers: admin,
    body: JSON.stringify({ quotas: [{ metric: "api_calls", limit: 10, period: "month", burst_percent: 0, hard: true }] }),
  });
  assert.ok(res.ok, await res.text());
  res = await fetch(`${s.direct_url}/v1/admin/tenants/${tenant}`, { method: "PUT", headers: admin, body: JSON.stringify({ plan }) });
  assert.ok(res.ok, await res.text());

  const app = express();
  app.use(expressQuotaGuard({ tenant: (req) => req.get("x-tenant"), quota: { baseUrl: s.url, apiKey: s.admin_key, ttlMs: 200 } }));
  app.get("/work", (_req, res) => res.send("done"));
  const srv = app.listen(0, "127.0.0.1");
  await new Promise((r) => srv.once("listening", r));
  const work = () => fetch(`http://127.0.0.1:${(srv.address() as AddressInfo).port}/work`, { headers: { "x-tenant": tenant } });
  try {
    assert.equal((await work()).status, 200);
    const c = new Client({ baseUrl: s.url, apiKey: s.admin_key, flushOnExit: false });
    await c.send([{ tenant, metric: "api_calls", value: 50 }]);
    const deadline = Date.now() + 60_000;
    let state = "";
    while (Date.now() < deadline && state !== "blocked") {
      state = (await c.quotas(tenant)).quotas[0]?.state ?? "";
      if (state !== "blocked") await sleep(300);
    }
    assert.equal(state, "blocked");
    await c.close();
    await sleep(300);
    const refused = await work();
    assert.equal(refused.status, 429);
    assert.ok(Number(refused.headers.get("retry-after")) > 0);
    assert.equal(((await refused.json()) as { error: { code: string } }).error.code, "quota_exceeded");
  } finally {
    srv.closeAllConnections();
    srv.close();
  }
});

test("the example app meters its requests and tokens", async () => {
  const s = stack();
  const tenant = "sdk-ts-example-" + randomBytes(4).toString("hex");
  const dir = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
  const child = spawn(process.execPath, ["examples/express-app.mjs"], {
    cwd: dir,
    env: { ...process.env, METERING_URL: s.url, METERING_KEY: s.admin_key, PORT: "0" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const url = await new Promise<string>((resolveUrl, reject) => {
      let out = "";
      child.stdout!.on("data", (b: Buffer) => {
        out += b.toString();
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) resolveUrl(m[1]);
      });
      child.once("exit", (code) => reject(new Error(`the example exited with ${code}`)));
    });
    for (let i = 0; i < 3; i++) {
      const res = await fetch(`${url}/v1/chat`, {
        method: "POST",
        headers: { "x-tenant": tenant, "x-user": "u1", "content-type": "application/json" },
        body: JSON.stringify({ prompt: "one two three" }),
      });
      assert.equal(res.status, 200);
      assert.deepEqual(await res.json(), { reply: "you said: one two three" });
    }
    child.kill("SIGTERM");
    await new Promise((r) => child.once("exit", r));
    const c = new Client({ baseUrl: s.url, apiKey: s.admin_key, flushOnExit: false });
    const calls = await counted(c, tenant, "api_calls", 3n);
    assert.equal(calls.total, 3n);
    const tokens = await counted(c, tenant, "tokens", 6n);
    assert.equal(tokens.total, 3n * (3n + 5n), "3 words in and 5 out per request");
    await c.close();
  } finally {
    child.kill("SIGKILL");
  }
});
