// HTTP plumbing shared by the client and the quota guard: errors as the
// API states them, Retry-After, bounded answers, backoff.

import { JsonObject, type JsonValue, answerLimits, parseJSON } from "./json.js";

/** An answer of the metering API that is not a success. */
export class MeteringError extends Error {
  /**
   * @param status the HTTP status (0 when no answer came)
   * @param code the API's error code, such as rate_limited, or "network"
   * @param retryAfterMs the Retry-After the API sent, in milliseconds, if any
   * @param body the answer's JSON, if it was JSON
   */
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly retryAfterMs?: number,
    readonly body?: JsonValue,
  ) {
    super(message);
    this.name = "MeteringError";
  }

  /** Whether sending the same request again may succeed: 429, 5xx, or no answer. */
  get retriable(): boolean {
    return this.status === 0 || this.status === 429 || this.status === 408 || this.status >= 500;
  }
}

/** Retry-After in milliseconds (seconds or an HTTP date), or undefined. */
export function retryAfterMs(h: string | null, now = Date.now()): number | undefined {
  if (h === null) return undefined;
  const t = h.trim();
  if (/^\d+$/.test(t)) return Number(t) * 1000;
  const d = Date.parse(t);
  if (Number.isNaN(d)) return undefined;
  return Math.max(0, d - now);
}

/** Reads at most max bytes of a response body; throws when it is longer. */
export async function readBounded(res: Response, max: number): Promise<Uint8Array> {
  if (!res.body) return new Uint8Array();
  const chunks: Uint8Array[] = [];
  let n = 0;
  const reader = res.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    n += value.byteLength;
    if (n > max) {
      await reader.cancel();
      throw new Error(`answer longer than ${max} bytes`);
    }
    chunks.push(value);
  }
  const out = new Uint8Array(n);
  let o = 0;
  for (const c of chunks) {
    out.set(c, o);
    o += c.byteLength;
  }
  return out;
}

/** Turns a failed answer into a MeteringError, reading its {"error":{code,message}}. */
export async function errorOf(res: Response, what: string): Promise<MeteringError> {
  let body: JsonValue | undefined;
  let code = `http_${res.status}`;
  let message = `${what}: HTTP ${res.status}`;
  try {
    body = parseJSON(await readBounded(res, 1 << 20), answerLimits).value;
    const err = body instanceof JsonObject ? body.get("error") : undefined;
    if (err instanceof JsonObject) {
      const c = err.get("code");
      const m = err.get("message");
      if (typeof c === "string") code = c;
      if (typeof m === "string") message = `${what}: HTTP ${res.status} ${code}: ${m}`;
    }
  } catch {
    // Not JSON: the status says enough.
  }
  return new MeteringError(res.status, code, message, retryAfterMs(res.headers.get("retry-after")), body);
}

/** Waits ms milliseconds, or until signal aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * The wait before attempt number attempt (1 for the first retry):
 * exponential from min to max with full jitter, and never shorter than
 * what the server asked for in Retry-After.
 */
export function backoffMs(attempt: number, minMs: number, maxMs: number, retryAfter?: number): number {
  const cap = Math.min(maxMs, minMs * 2 ** Math.min(attempt - 1, 30));
  const jittered = cap / 2 + Math.random() * (cap / 2);
  return Math.max(jittered, retryAfter ?? 0);
}
