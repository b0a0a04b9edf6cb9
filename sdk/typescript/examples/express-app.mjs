// A small Express service metered with @usagemeter/metering:
//   - the quota guard refuses tenants whose quota is blocked (429 with
//     Retry-After until the period ends), fail open when the metering API
//     is down;
//   - per-IP and per-user token buckets limit request rates;
//   - every request is metered after its response (api_calls, by route
//     and status), and the LLM tokens a handler records (tokens, by model
//     and kind).
//
// Run it (after `npm ci && npm run build` in sdk/typescript):
//   METERING_URL=http://127.0.0.1:8080 METERING_KEY=<admin or viewer key> node examples/express-app.mjs
//   curl -X POST localhost:3000/v1/chat -H 'X-Tenant: acme' -H 'X-User: u1' -H 'Content-Type: application/json' -d '{"prompt":"hello"}'
import express from "express";
import { Client, expressMeter, expressQuotaGuard, recordTokens } from "@usagemeter/metering";

const baseUrl = process.env.METERING_URL ?? "http://127.0.0.1:8080";
const apiKey = process.env.METERING_KEY ?? "";
if (!apiKey) {
  console.error("set METERING_KEY to a key of the metering API (make run prints an admin key)");
  process.exit(2);
}

const metering = new Client({
  baseUrl,
  apiKey,
  onError: (err, events) => console.error(`metering: ${events.length} events not delivered: ${err.message}`),
});
const tenant = (req) => req.get("x-tenant") || undefined;

const app = express();
app.use(express.json());
app.use(expressMeter({ client: metering, tenant, source: "example-chat" }));
app.use(
  expressQuotaGuard({
    tenant,
    quota: { baseUrl, apiKey, onError: (t, err) => console.error(`quota of ${t}: ${err.message}`) },
    perIp: { ratePerSecond: 50, burst: 100 },
    perUser: { key: (req) => req.get("x-user") || undefined, ratePerSecond: 5, burst: 10 },
  }),
);

// A stand-in for an LLM call: its "tokens" are the words in and out.
app.post("/v1/chat", (req, res) => {
  const prompt = String(req.body?.prompt ?? "");
  const reply = `you said: ${prompt}`;
  recordTokens(res, { model: "echo-1", input: prompt.split(/\s+/).filter(Boolean).length, output: reply.split(/\s+/).length });
  res.json({ reply });
});

app.get("/healthz", (_req, res) => res.send("ok"));

const server = app.listen(Number(process.env.PORT ?? 3000), process.env.HOST ?? "127.0.0.1", () => {
  const { address, port } = server.address();
  console.log(`listening on http://${address}:${port}`);
});

// Stop taking requests, then flush what is metered.
async function stop() {
  server.close();
  server.closeIdleConnections?.();
  await metering.close();
  process.exit(0);
}
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
