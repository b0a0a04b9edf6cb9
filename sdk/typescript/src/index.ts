/**
 * The TypeScript SDK of the metering service: build and check usage
 * events by the Go events package's rules (same fields, messages and
 * canonical bytes), send them in background batches with retries that
 * resend the same ids, read usage and quotas with exact integers, and
 * enforce quotas and rates in Express and Fastify.
 *
 * @packageDocumentation
 */

export * from "./event.js";
export * from "./client.js";
export * from "./guard.js";
export * from "./middleware.js";
export { MeteringError } from "./http.js";
export { JsonError, JsonNumber, JsonObject, parseJSON, defaultLimits, type JsonLimits, type JsonValue, type Parsed, type DuplicateKey } from "./json.js";
export { parseRFC3339, formatRFC3339Nano } from "./timefmt.js";
