// Quota enforcement in a producing service, as Go's events.QuotaGuard
// (events/guard.go) does it: each tenant's quota states read from
// GET /v1/quotas/{tenant}, cached for a TTL, one read in flight per
// tenant; a tenant with a blocked quota is refused until its period ends.
// Token buckets limit request rates per tenant, user or client address.

import { errorOf, readBounded } from "./http.js";
import { JsonObject, answerLimits, parseJSON } from "./json.js";
import { parseRFC3339 } from "./timefmt.js";

/** How a QuotaGuard reads quotas. */
export interface GuardOptions {
  /** The metering API, such as http://127.0.0.1:8080. */
  baseUrl: string;
  /** A key that reads quotas: a viewer or admin key (or the tenant's own). */
  apiKey: string;
  /** Enforce only these metrics; empty or absent: every metric of the plan. */
  metrics?: string[];
  /** How long a tenant's quota states are cached, in ms (default 5000). */
  ttlMs?: number;
  /**
   * When the quota API cannot be read: false (default, fail open) lets the
   * request through and reports to onError; true answers 503.
   */
  failClosed?: boolean;
  /** Receives quota API failures. */
  onError?: (tenant: string, err: Error) => void;
  /** Each quota read's time limit, in ms (default 2000). */
  timeoutMs?: number;
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
  /** The clock, in ms since the epoch (default Date.now). */
  now?: () => number;
}

/** The verdict for one request. */
export interface Decision {
  /** Whether the request may go through. */
  allowed: boolean;
  /** Why not: "quota" (a blocked quota), "rate" (a token bucket is empty) or "unavailable" (quota API down, fail closed). */
  reason?: "quota" | "rate" | "unavailable";
  /** The blocked metric, for reason "quota". */
  metric?: string;
  /** How long until a retry can succeed, in ms. */
  retryAfterMs: number;
}

interface Entry {
  blockedUntil: number; // ms; 0: not blocked
  metric: string;
  expires: number;
}

const maxQuotaAnswer = 1 << 20;

/** Refuses tenants whose quota is blocked (a hard quota beyond its burst) until the period ends. */
export class QuotaGuard {
  private readonly cache = new Map<string, Entry>();
  private readonly flight = new Map<string, Promise<Entry>>();
  private readonly ttl: number;
  private readonly now: () => number;
  private readonly fetch: typeof fetch;

  /** @param opts where quotas are read; see GuardOptions for the defaults */
  constructor(readonly opts: GuardOptions) {
    if (!opts.baseUrl) throw new TypeError("metering: QuotaGuard needs baseUrl");
    this.ttl = opts.ttlMs && opts.ttlMs > 0 ? opts.ttlMs : 5000;
    this.now = opts.now ?? Date.now;
    this.fetch = opts.fetch ?? globalThis.fetch;
  }

  /**
   * The decision for tenant now, from the cache or one quota read. When
   * the read fails the decision follows failClosed (retry after 1 s) and
   * the error is reported to onError.
   */
  async check(tenant: string): Promise<Decision> {
    const now = this.now();
    let e = this.cache.get(tenant);
    if (!e || now > e.expires) {
      try {
        e = await this.read(tenant, now);
      } catch (err) {
        this.opts.onError?.(tenant, err as Error);
        return this.opts.failClosed ? { allowed: false, reason: "unavailable", retryAfterMs: 1000 } : { allowed: true, retryAfterMs: 0 };
      }
    }
    if (e.blockedUntil !== 0 && now < e.blockedUntil) {
      return { allowed: false, reason: "quota", metric: e.metric, retryAfterMs: e.blockedUntil - now };
    }
    return { allowed: true, retryAfterMs: 0 };
  }

  /** Forgets the cached states of tenant (or of every tenant). */
  forget(tenant?: string): void {
    if (tenant === undefined) this.cache.clear();
    else this.cache.delete(tenant);
  }

  private read(tenant: string, now: number): Promise<Entry> {
    let p = this.flight.get(tenant);
    if (!p) {
      p = this.fetchQuotas(tenant, now).finally(() => this.flight.delete(tenant));
      this.flight.set(tenant, p);
    }
    return p;
  }

  private async fetchQuotas(tenant: string, now: number): Promise<Entry> {
    const what = `metering: reading quotas of ${tenant}`;
    const c = new AbortController();
    const t = setTimeout(() => c.abort(new Error(`no answer in ${this.opts.timeoutMs ?? 2000} ms`)), this.opts.timeoutMs ?? 2000);
    try {
      let res: Response;
      try {
        res = await this.fetch(this.opts.baseUrl.replace(/\/+$/, "") + "/v1/quotas/" + encodeURIComponent(tenant), {
          headers: { authorization: "Bearer " + this.opts.apiKey, accept: "application/json" },
          signal: c.signal,
        });
      } catch (err) {
        throw new Error(`${what}: ${(err as Error).message}`);
      }
      const e: Entry = { blockedUntil: 0, metric: "", expires: now + this.ttl };
      if (res.status === 404) {
        // An unregistered tenant has no quotas.
        await res.body?.cancel().catch(() => {});
        this.cache.set(tenant, e);
        return e;
      }
      if (res.status !== 200) throw await errorOf(res, what);
      const body = parseJSON(await readBounded(res, maxQuotaAnswer), answerLimits).value;
      const quotas = body instanceof JsonObject ? body.get("quotas") : undefined;
      if (!Array.isArray(quotas)) throw new Error(`${what}: the answer has no quotas`);
      for (const q of quotas) {
        if (!(q instanceof JsonObject)) continue;
        const metric = q.get("metric");
        const state = q.get("state");
        const end = q.get("period_end");
        if (state !== "blocked" || typeof metric !== "string" || !this.enforced(metric) || typeof end !== "string") continue;
        const ns = parseRFC3339(end);
        if (ns === undefined) throw new Error(`${what}: period_end ${JSON.stringify(end)} is not RFC 3339`);
        const until = Number(ns / 1_000_000n);
        if (e.blockedUntil === 0 || until > e.blockedUntil) {
          e.blockedUntil = until;
          e.metric = metric;
        }
      }
      this.cache.set(tenant, e);
      return e;
    } finally {
      clearTimeout(t);
    }
  }

  private enforced(metric: string): boolean {
    return !this.opts.metrics || this.opts.metrics.length === 0 || this.opts.metrics.includes(metric);
  }
}

/** A token bucket's rate: ratePerSecond tokens a second, at most burst saved up. */
export interface RateOptions {
  /** Tokens added per second. */
  ratePerSecond: number;
  /** The most tokens saved up (default: ratePerSecond, at least 1). */
  burst?: number;
}

/**
 * Token buckets by key (a tenant, a user, a client address): each request
 * takes one token; an empty bucket refuses with the time until a token is
 * back. At most maxKeys buckets are kept, the least recently used dropped
 * first (a dropped bucket starts full again).
 */
export class RateLimiter {
  private readonly buckets = new Map<string, { tokens: number; at: number }>();
  private readonly rate: number;
  private readonly burst: number;

  /**
   * @param opts the rate and burst of every bucket
   * @param maxKeys the most buckets kept (default 100000)
   * @param now the clock in ms (default Date.now)
   */
  constructor(
    opts: RateOptions,
    readonly maxKeys = 100_000,
    private readonly now: () => number = Date.now,
  ) {
    if (!(opts.ratePerSecond > 0)) throw new TypeError("metering: RateLimiter needs ratePerSecond > 0");
    this.rate = opts.ratePerSecond;
    this.burst = opts.burst && opts.burst > 0 ? opts.burst : Math.max(1, Math.floor(opts.ratePerSecond));
  }

  /** Takes a token of key's bucket: 0 when taken, else the ms until one is back (nothing taken). */
  take(key: string): number {
    const now = this.now();
    let b = this.buckets.get(key);
    if (b) this.buckets.delete(key);
    else b = { tokens: this.burst, at: now };
    b.tokens = Math.min(this.burst, b.tokens + ((now - b.at) / 1000) * this.rate);
    b.at = now;
    this.buckets.set(key, b);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.ceil(((1 - b.tokens) / this.rate) * 1000);
  }
}
