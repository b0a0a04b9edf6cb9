// The client: emits events over POST /v1/events in background batches,
// retries what the API did not accept with the same ids, and reads usage
// and quotas.

import { type EventInput, type FieldError, type MeteringEvent, ValidationError, canonicalJSON, toEvent, type ValidatorOptions } from "./event.js";
import { MeteringError, backoffMs, errorOf, readBounded, retryAfterMs, sleep } from "./http.js";
import { JsonNumber, JsonObject, type JsonValue, answerLimits, parseJSON } from "./json.js";

/**
 * What emit does when maxQueue events are already waiting:
 * "reject" throws a QueueFullError and queues nothing (the caller keeps
 * the event and decides); "drop-oldest" drops the event that has waited
 * longest, reports it to onError with a QueueFullError, and queues the new one.
 */
export type OverflowPolicy = "reject" | "drop-oldest";

/** How a Client sends and reads. */
export interface ClientOptions {
  /** The metering API, such as http://127.0.0.1:8080. */
  baseUrl: string;
  /** A key that may send the events (a tenant key sends its own tenant's) and read. */
  apiKey: string;
  /** Events per request, 1 to 1000 (default 500). A full batch is sent at once. */
  batchSize?: number;
  /** The longest an event waits in the queue before its batch is sent, in ms (default 1000). */
  flushIntervalMs?: number;
  /** The most events waiting to be sent, not counting those in flight (default 10000). */
  maxQueue?: number;
  /** What emit does on a full queue (default "reject"). */
  overflow?: OverflowPolicy;
  /** Batches in flight at once (default 2). */
  concurrency?: number;
  /** Attempts per batch for 429, 5xx and network errors before giving up (default 12). */
  maxAttempts?: number;
  /** The first retry's wait, in ms (default 200); it doubles up to maxBackoffMs (default 30000). Retry-After is always honoured. */
  minBackoffMs?: number;
  /** The longest wait between attempts, unless Retry-After asks for more (default 30000). */
  maxBackoffMs?: number;
  /** Each request's time limit, in ms (default 10000). */
  timeoutMs?: number;
  /**
   * Flush and close when the process's event loop empties (beforeExit),
   * default true, giving up (to onError) what is undelivered after
   * exitTimeoutMs (default 10000).
   */
  flushOnExit?: boolean;
  /** How long the flush at exit may take, in ms (default 10000). */
  exitTimeoutMs?: number;
  /**
   * Receives what could not be delivered: events refused by the API (a
   * ValidationError), given up after maxAttempts or at close (a
   * MeteringError), or dropped by the overflow policy (a QueueFullError).
   * Their ids are kept: emit them again to retry safely.
   */
  onError?: (err: Error, events: MeteringEvent[]) => void;
  /** The rules events are checked with (the contract's defaults). */
  validator?: ValidatorOptions;
  /** The fetch to use (default: the global fetch). */
  fetch?: typeof fetch;
}

/** emit was refused (or an event dropped) because the queue was full. */
export class QueueFullError extends Error {
  constructor(readonly maxQueue: number) {
    super(`metering: the queue holds ${maxQueue} events already`);
    this.name = "QueueFullError";
  }
}

/** What the client has done so far. */
export interface ClientStats {
  /** Events waiting to be sent. */
  queued: number;
  /** Events in requests not yet answered or waiting to be retried. */
  inFlight: number;
  /** Events the API accepted (202). */
  delivered: number;
  /** Requests sent again after a retriable failure. */
  retries: number;
  /** Events dropped by the overflow policy. */
  dropped: number;
  /** Events given up on or refused by the API. */
  failed: number;
}

interface Entry {
  seq: number;
  event: MeteringEvent;
  json: string;
}

interface Batch {
  entries: Entry[];
}

/** A window of usage. */
export interface UsageWindow {
  start: string;
  end: string;
  /** The window's value, exactly. */
  value: bigint;
  /** How many events it counts. */
  events: bigint;
  /** With a meter: the group's value of each group_by property (null when missing). */
  group?: Record<string, string | null>;
}

/** GET /v1/usage's answer, integers exact. */
export interface Usage {
  tenant: string;
  metric: string;
  meter?: string;
  aggregation?: string;
  groupBy?: string[];
  filter?: Record<string, string>;
  window: string;
  from: string;
  to: string;
  windows: UsageWindow[];
  totals?: Array<{ group: Record<string, string | null>; value: bigint; events: bigint }>;
  total: bigint;
}

/** What usage reads. */
export interface UsageQuery {
  /** Required with an admin or viewer key; a tenant key reads its own. */
  tenant?: string;
  /** The metric whose implicit meter is read (exactly one of metric and meter). */
  metric?: string;
  /** The meter to read. */
  meter?: string;
  /** With meter: the group_by properties to answer groups of. */
  groupBy?: string[];
  /** With meter: keep only groups with these property values. */
  filter?: Record<string, string>;
  /** minute, hour (default), day or month. */
  window?: "minute" | "hour" | "day" | "month";
  /** Inclusive start. */
  from?: Date | string;
  /** Exclusive end (default now). */
  to?: Date | string;
}

/** One quota's state (GET /v1/quotas/{tenant}), integers exact. */
export interface Quota {
  metric: string;
  meter: string;
  filter: Record<string, string>;
  perGroup: boolean;
  /** null: unlimited. */
  limit: bigint | null;
  used: bigint;
  /** null: unlimited. */
  remaining: bigint | null;
  periodStart: string;
  periodEnd: string;
  state: "ok" | "warning" | "exceeded" | "blocked";
  hard: boolean;
  burstPercent: number;
  allowance?: bigint;
  groupsTotal?: number;
  groups?: Array<{ group: Record<string, string | null>; used: bigint; remaining: bigint | null; state: string }>;
}

/** GET /v1/quotas/{tenant}'s answer. */
export interface Quotas {
  tenant: string;
  plan: string | null;
  quotas: Quota[];
}

const maxAnswer = 64 << 20;

/**
 * A client of the metering API. emit queues an event and returns at once;
 * batches go out when full or after flushIntervalMs, and what the API did
 * not accept (429, 5xx, no answer) is sent again, the same bytes and ids,
 * after a backoff that honours Retry-After. close (and, by default, the
 * process's beforeExit) flushes.
 */
export class Client {
  private readonly opts: Required<Omit<ClientOptions, "onError" | "validator" | "fetch">> & Pick<ClientOptions, "onError" | "validator">;
  private readonly fetch: typeof fetch;
  private readonly queue: Entry[] = [];
  private head = 0;
  private seq = 0;
  private readonly inFlight = new Set<Batch>();
  private readonly waiters: Array<{ upTo: number; resolve: () => void }> = [];
  private readonly timer: NodeJS.Timeout;
  private readonly stop = new AbortController();
  private closed = false;
  private readonly counts = { delivered: 0, retries: 0, dropped: 0, failed: 0 };
  private readonly exitHook = () => {
    if (this.pending() > 0) void this.close(this.opts.exitTimeoutMs);
  };

  /** @param options where to send and how; see ClientOptions for the defaults */
  constructor(options: ClientOptions) {
    if (!options.baseUrl || !options.apiKey) throw new TypeError("metering: Client needs baseUrl and apiKey");
    const batchSize = Math.min(1000, Math.max(1, options.batchSize ?? 500));
    this.opts = {
      baseUrl: options.baseUrl.replace(/\/+$/, ""),
      apiKey: options.apiKey,
      batchSize,
      flushIntervalMs: options.flushIntervalMs ?? 1000,
      maxQueue: Math.max(1, options.maxQueue ?? 10000),
      overflow: options.overflow ?? "reject",
      concurrency: Math.max(1, options.concurrency ?? 2),
      maxAttempts: Math.max(1, options.maxAttempts ?? 12),
      minBackoffMs: options.minBackoffMs ?? 200,
      maxBackoffMs: options.maxBackoffMs ?? 30000,
      timeoutMs: options.timeoutMs ?? 10000,
      flushOnExit: options.flushOnExit ?? true,
      exitTimeoutMs: options.exitTimeoutMs ?? 10000,
      onError: options.onError,
      validator: options.validator,
    };
    this.fetch = options.fetch ?? globalThis.fetch;
    this.timer = setInterval(() => this.pump(true), this.opts.flushIntervalMs);
    this.timer.unref();
    if (this.opts.flushOnExit) process.on("beforeExit", this.exitHook);
  }

  /**
   * Checks ev (a ValidationError lists every field error), fills in a
   * UUIDv7 id and the current time when missing, and queues it. Returns
   * the event as it will be sent: keep it to send it again later.
   */
  emit(ev: EventInput): MeteringEvent {
    if (this.closed) throw new Error("metering: emit on a closed Client");
    const event = toEvent(ev, this.opts.validator);
    if (this.queue.length - this.head >= this.opts.maxQueue) {
      if (this.opts.overflow === "reject") throw new QueueFullError(this.opts.maxQueue);
      const old = this.queue[this.head++];
      this.counts.dropped++;
      this.report(new QueueFullError(this.opts.maxQueue), [old.event]);
      this.settle();
    }
    this.queue.push({ seq: ++this.seq, event, json: canonicalJSON(event) });
    if (this.queue.length - this.head >= this.opts.batchSize) this.pump(false);
    return event;
  }

  /**
   * Sends events now, in batches, and resolves once the API accepted
   * every one (or rejects with the first error: a ValidationError for
   * events the API refused, a MeteringError once attempts ran out).
   * Nothing is queued.
   */
  async send(events: EventInput[]): Promise<MeteringEvent[]> {
    const checked = events.map((e) => toEvent(e, this.opts.validator));
    const entries = checked.map((event) => ({ seq: 0, event, json: canonicalJSON(event) }));
    let failure: Error | undefined;
    for (let i = 0; i < entries.length; i += this.opts.batchSize) {
      await this.deliver(entries.slice(i, i + this.opts.batchSize), (err) => (failure ??= err));
    }
    if (failure) throw failure;
    return checked;
  }

  /** Resolves when every event emitted before the call is delivered or given up. */
  flush(): Promise<void> {
    const upTo = this.seq;
    if (this.lowestPending() > upTo) return Promise.resolve();
    return new Promise((resolve) => {
      this.waiters.push({ upTo, resolve });
      this.pump(true);
    });
  }

  /**
   * Flushes, then stops. Events still undelivered after timeoutMs (default
   * 30000) are given up and reported to onError.
   */
  async close(timeoutMs = 30000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    process.off("beforeExit", this.exitHook);
    clearInterval(this.timer);
    let t: NodeJS.Timeout | undefined;
    const deadline = new Promise<void>((resolve) => {
      t = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([this.flush(), deadline]);
    clearTimeout(t);
    this.stop.abort();
    await this.flush();
  }

  /** Counts of what the client has done, and what waits. */
  stats(): ClientStats {
    let inFlight = 0;
    for (const b of this.inFlight) inFlight += b.entries.length;
    return { queued: this.queue.length - this.head, inFlight, ...this.counts };
  }

  private pending(): number {
    return this.queue.length - this.head + this.inFlight.size;
  }

  private lowestPending(): number {
    let low = this.head < this.queue.length ? this.queue[this.head].seq : Infinity;
    for (const b of this.inFlight) for (const e of b.entries) low = Math.min(low, e.seq);
    return low;
  }

  private settle(): void {
    if (this.waiters.length === 0) return;
    const low = this.lowestPending();
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      if (this.waiters[i].upTo < low) {
        this.waiters[i].resolve();
        this.waiters.splice(i, 1);
      }
    }
  }

  private report(err: Error, events: MeteringEvent[]): void {
    if (events.length === 0) return;
    try {
      this.opts.onError?.(err, events);
    } catch {
      // A failing callback must not stop delivery.
    }
  }

  /** Starts batches while there is room: full ones, or any when force. */
  private pump(force: boolean): void {
    force ||= this.waiters.length > 0 || this.closed;
    while (this.inFlight.size < this.opts.concurrency) {
      const n = this.queue.length - this.head;
      if (n === 0 || (!force && n < this.opts.batchSize)) break;
      const take = Math.min(n, this.opts.batchSize);
      const batch: Batch = { entries: this.queue.slice(this.head, this.head + take) };
      this.head += take;
      if (this.head > 4096 && this.head * 2 > this.queue.length) {
        this.queue.splice(0, this.head);
        this.head = 0;
      }
      this.inFlight.add(batch);
      void this.deliver(batch.entries, (err, evs) => this.report(err, evs)).finally(() => {
        this.inFlight.delete(batch);
        this.settle();
        this.pump(false);
      });
    }
  }

  /**
   * Delivers entries: sends them, retries what may succeed later, drops
   * what the API refused as invalid and resends the rest, halves a batch
   * the API finds too large. Never rejects; failures go to fail.
   */
  private async deliver(entries: Entry[], fail: (err: Error, events: MeteringEvent[]) => void): Promise<void> {
    let attempt = 0;
    while (entries.length > 0) {
      const err = await this.post(entries);
      if (err === undefined) {
        this.counts.delivered += entries.length;
        return;
      }
      if (err instanceof ValidationError) {
        // All or nothing: the invalid events are dropped, the others resent.
        const bad = new Set(err.errors.map((e) => e.index));
        const refused = entries.filter((_, i) => bad.has(i));
        if (refused.length === 0) {
          this.counts.failed += entries.length;
          fail(err, entries.map((e) => e.event));
          return;
        }
        this.counts.failed += refused.length;
        // Renumber the errors by the refused events' positions in what is reported.
        const at = new Map<number, number>();
        entries.forEach((_, i) => bad.has(i) && at.set(i, at.size));
        fail(new ValidationError(err.errors.map((e) => ({ ...e, index: at.get(e.index) ?? 0 }))), refused.map((e) => e.event));
        entries = entries.filter((_, i) => !bad.has(i));
        continue;
      }
      if (err.status === 413 && entries.length > 1) {
        const half = Math.ceil(entries.length / 2);
        await this.deliver(entries.slice(0, half), fail);
        entries = entries.slice(half);
        continue;
      }
      attempt++;
      if (!err.retriable || attempt >= this.opts.maxAttempts || this.stop.signal.aborted) {
        this.counts.failed += entries.length;
        fail(err, entries.map((e) => e.event));
        return;
      }
      this.counts.retries++;
      await sleep(backoffMs(attempt, this.opts.minBackoffMs, this.opts.maxBackoffMs, err.retryAfterMs), this.stop.signal);
    }
  }

  /** One POST of entries: undefined when accepted, else why not. */
  private async post(entries: Entry[]): Promise<MeteringError | ValidationError | undefined> {
    const body = entries.length === 1 ? entries[0].json : "[" + entries.map((e) => e.json).join(",") + "]";
    return withSignal(this.opts.timeoutMs, this.stop.signal, async (signal) => {
      let res: Response;
      try {
        res = await this.fetch(this.opts.baseUrl + "/v1/events", {
          method: "POST",
          headers: { authorization: "Bearer " + this.opts.apiKey, "content-type": "application/json" },
          body,
          signal,
        });
      } catch (e) {
        return new MeteringError(0, "network", `metering: sending events: ${(e as Error).message}`);
      }
      if (res.status >= 200 && res.status < 300) {
        await res.body?.cancel().catch(() => {});
        return undefined;
      }
      let err: MeteringError;
      try {
        err = await errorOf(res, "metering: sending events");
      } catch (e) {
        return new MeteringError(0, "network", `metering: sending events: ${(e as Error).message}`);
      }
      if (res.status === 400 && err.body instanceof JsonObject) {
        const list = err.body.get("errors");
        if (Array.isArray(list)) {
          const fes: FieldError[] = [];
          for (const fe of list) {
            if (!(fe instanceof JsonObject)) continue;
            const index = fe.get("index");
            const field = fe.get("field");
            const message = fe.get("message");
            fes.push({
              index: index instanceof JsonNumber ? index.toNumber() : 0,
              field: typeof field === "string" ? field : "",
              message: typeof message === "string" ? message : "",
            });
          }
          if (entries.length === 1) for (const fe of fes) fe.index = 0;
          return new ValidationError(fes);
        }
      }
      return err;
    });
  }

  /** GET path with the key; retries 429 and 5xx a few times, honouring Retry-After. */
  private async get(path: string): Promise<JsonValue> {
    for (let attempt = 1; ; attempt++) {
      const what = `metering: GET ${path.split("?")[0]}`;
      const got = await withSignal(this.opts.timeoutMs, new AbortController().signal, async (signal) => {
        try {
          const res = await this.fetch(this.opts.baseUrl + path, {
            headers: { authorization: "Bearer " + this.opts.apiKey, accept: "application/json" },
            signal,
          });
          if (res.ok) return { value: parseJSON(await readBounded(res, maxAnswer), answerLimits).value };
          return { err: await errorOf(res, what) };
        } catch (e) {
          return { err: new MeteringError(0, "network", `${what}: ${(e as Error).message}`) };
        }
      });
      const err = got.err;
      if (err === undefined) return got.value as JsonValue;
      if (!err.retriable || attempt >= 4) throw err;
      await sleep(backoffMs(attempt, this.opts.minBackoffMs, this.opts.maxBackoffMs, err.retryAfterMs));
    }
  }

  /** Reads GET /v1/usage: windows and totals, every integer exact. */
  async usage(q: UsageQuery): Promise<Usage> {
    const p = new URLSearchParams();
    if (q.tenant) p.set("tenant", q.tenant);
    if (q.metric) p.set("metric", q.metric);
    if (q.meter) p.set("meter", q.meter);
    for (const g of q.groupBy ?? []) p.append("group_by", g);
    for (const [k, v] of Object.entries(q.filter ?? {})) p.set(`filter[${k}]`, v);
    if (q.window) p.set("window", q.window);
    if (q.from) p.set("from", typeof q.from === "string" ? q.from : q.from.toISOString());
    if (q.to) p.set("to", typeof q.to === "string" ? q.to : q.to.toISOString());
    const o = obj(await this.get("/v1/usage?" + p.toString()));
    const u: Usage = {
      tenant: str(o.get("tenant")),
      metric: str(o.get("metric")),
      window: str(o.get("window")),
      from: str(o.get("from")),
      to: str(o.get("to")),
      windows: arr(o.get("windows")).map((w) => {
        const wo = obj(w);
        const out: UsageWindow = { start: str(wo.get("start")), end: str(wo.get("end")), value: big(wo.get("value")), events: big(wo.get("events")) };
        if (wo.has("group")) out.group = group(wo.get("group"));
        return out;
      }),
      total: big(o.get("total")),
    };
    if (o.has("meter")) u.meter = str(o.get("meter"));
    if (o.has("aggregation")) u.aggregation = str(o.get("aggregation"));
    if (o.has("group_by")) u.groupBy = arr(o.get("group_by")).map(str);
    if (o.has("filter")) u.filter = strings(o.get("filter"));
    if (o.has("totals")) {
      u.totals = arr(o.get("totals")).map((t) => {
        const to = obj(t);
        return { group: group(to.get("group")), value: big(to.get("value")), events: big(to.get("events")) };
      });
    }
    return u;
  }

  /** Reads GET /v1/quotas/{tenant}: each quota's state, integers exact. */
  async quotas(tenant: string): Promise<Quotas> {
    const o = obj(await this.get("/v1/quotas/" + encodeURIComponent(tenant)));
    return quotasOf(o);
  }
}

/** Maps a quotas answer to Quotas. */
export function quotasOf(o: JsonObject): Quotas {
  return {
    tenant: str(o.get("tenant")),
    plan: o.get("plan") === null ? null : str(o.get("plan")),
    quotas: arr(o.get("quotas")).map((q) => {
      const qo = obj(q);
      const out: Quota = {
        metric: str(qo.get("metric")),
        meter: str(qo.get("meter") ?? qo.get("metric")),
        filter: strings(qo.get("filter") ?? new JsonObject()),
        perGroup: qo.get("per_group") === true,
        limit: bigOrNull(qo.get("limit")),
        used: big(qo.get("used")),
        remaining: bigOrNull(qo.get("remaining")),
        periodStart: str(qo.get("period_start")),
        periodEnd: str(qo.get("period_end")),
        state: str(qo.get("state")) as Quota["state"],
        hard: qo.get("hard") === true,
        burstPercent: num(qo.get("burst_percent") ?? new JsonNumber("0")),
      };
      if (qo.has("allowance")) out.allowance = big(qo.get("allowance"));
      if (qo.has("groups_total")) out.groupsTotal = num(qo.get("groups_total"));
      if (qo.has("groups")) {
        out.groups = arr(qo.get("groups")).map((g) => {
          const go = obj(g);
          return { group: group(go.get("group")), used: big(go.get("used")), remaining: bigOrNull(go.get("remaining")), state: str(go.get("state")) };
        });
      }
      return out;
    }),
  };
}

function bad(what: string, v: JsonValue | undefined): never {
  throw new MeteringError(0, "bad_answer", `metering: unexpected answer: want ${what}, got ${v === undefined ? "nothing" : JSON.stringify(v instanceof JsonNumber ? v.raw : v)}`);
}

function obj(v: JsonValue | undefined): JsonObject {
  return v instanceof JsonObject ? v : bad("an object", v);
}

function arr(v: JsonValue | undefined): JsonValue[] {
  if (v === null) return [];
  return Array.isArray(v) ? v : bad("an array", v);
}

function str(v: JsonValue | undefined): string {
  return typeof v === "string" ? v : bad("a string", v);
}

function big(v: JsonValue | undefined): bigint {
  return v instanceof JsonNumber && v.isInteger() ? v.toBigInt() : bad("an integer", v);
}

function bigOrNull(v: JsonValue | undefined): bigint | null {
  return v === null || v === undefined ? null : big(v);
}

function num(v: JsonValue | undefined): number {
  return v instanceof JsonNumber ? v.toNumber() : bad("a number", v);
}

function strings(v: JsonValue | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, s] of obj(v).members) out[k] = str(s);
  return out;
}

function group(v: JsonValue | undefined): Record<string, string | null> {
  const out: Record<string, string | null> = {};
  for (const [k, s] of obj(v).members) out[k] = s === null ? null : str(s);
  return out;
}

/**
 * Runs fn with a signal that aborts after timeoutMs or when stop aborts,
 * and releases both when fn is done.
 */
async function withSignal<T>(timeoutMs: number, stop: AbortSignal, fn: (signal: AbortSignal) => Promise<T>): Promise<T> {
  const c = new AbortController();
  const t = setTimeout(() => c.abort(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
  const onStop = () => c.abort(new Error("the client is closed"));
  if (stop.aborted) onStop();
  else stop.addEventListener("abort", onStop, { once: true });
  try {
    return await fn(c.signal);
  } finally {
    clearTimeout(t);
    stop.removeEventListener("abort", onStop);
  }
}

export { retryAfterMs };
