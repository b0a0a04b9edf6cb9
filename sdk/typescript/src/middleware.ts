// Express and Fastify adapters: quota and rate enforcement before a
// request is handled, and metering (requests, LLM tokens) after its
// response. Both frameworks are optional peers: nothing here imports
// them; requests and responses are used through the few members named
// below, which Express, Fastify and node:http all have.

import type { IncomingMessage, ServerResponse } from "node:http";
import type { MeteringEvent } from "./event.js";
import { type Decision, type GuardOptions, QuotaGuard, RateLimiter, type RateOptions } from "./guard.js";

/** What the enforcement adapters need of a request (Express's and Fastify's have it). */
export interface RequestLike {
  headers: IncomingMessage["headers"];
  ip?: string;
  socket?: { remoteAddress?: string };
}

/** How requests are limited before they are handled. */
export interface EnforceOptions<Req extends RequestLike = RequestLike> {
  /** The tenant a request bills to; undefined lets it through unchecked by quota and tenant rate. */
  tenant: (req: Req) => string | undefined;
  /** Quota enforcement: a QuotaGuard, or the options to make one. Absent: no quota check. */
  quota?: QuotaGuard | GuardOptions;
  /** A token bucket per tenant. */
  perTenant?: RateOptions;
  /** A token bucket per user: key names the user (undefined: not limited). */
  perUser?: RateOptions & { key: (req: Req) => string | undefined };
  /** A token bucket per client address: key defaults to req.ip, then the socket's address. */
  perIp?: RateOptions & { key?: (req: Req) => string | undefined };
  /** The most buckets kept per kind (default 100000). */
  maxKeys?: number;
  /** The clock, in ms (default Date.now). */
  now?: () => number;
}

/** A refusal: the status, headers and JSON body to answer. */
export interface Refusal {
  status: 429 | 503;
  /** Seconds, at least 1. */
  retryAfter: number;
  body: { error: { code: string; message: string } };
  decision: Decision;
}

/** Decides, for each request, whether it goes through; the framework adapters answer its refusals. */
export class Enforcer<Req extends RequestLike = RequestLike> {
  private readonly guard?: QuotaGuard;
  private readonly tenantRate?: RateLimiter;
  private readonly userRate?: RateLimiter;
  private readonly ipRate?: RateLimiter;
  private readonly now: () => number;

  /** @param opts what to enforce */
  constructor(readonly opts: EnforceOptions<Req>) {
    this.now = opts.now ?? Date.now;
    if (opts.quota) this.guard = opts.quota instanceof QuotaGuard ? opts.quota : new QuotaGuard({ now: this.now, ...opts.quota });
    if (opts.perTenant) this.tenantRate = new RateLimiter(opts.perTenant, opts.maxKeys, this.now);
    if (opts.perUser) this.userRate = new RateLimiter(opts.perUser, opts.maxKeys, this.now);
    if (opts.perIp) this.ipRate = new RateLimiter(opts.perIp, opts.maxKeys, this.now);
  }

  /** Undefined when req may go through, else the answer to give. */
  async decide(req: Req): Promise<Refusal | undefined> {
    if (this.ipRate) {
      const ip = this.opts.perIp?.key ? this.opts.perIp.key(req) : (req.ip ?? req.socket?.remoteAddress);
      const wait = ip === undefined ? 0 : this.ipRate.take(ip);
      if (wait > 0) return this.rate(wait);
    }
    if (this.userRate) {
      const user = this.opts.perUser!.key(req);
      const wait = user === undefined ? 0 : this.userRate.take(user);
      if (wait > 0) return this.rate(wait);
    }
    const tenant = this.opts.tenant(req);
    if (tenant === undefined || tenant === "") return undefined;
    if (this.tenantRate) {
      const wait = this.tenantRate.take(tenant);
      if (wait > 0) return this.rate(wait);
    }
    if (!this.guard) return undefined;
    const d = await this.guard.check(tenant);
    if (d.allowed) return undefined;
    const retryAfter = Math.max(1, Math.ceil(d.retryAfterMs / 1000));
    if (d.reason === "unavailable") {
      return { status: 503, retryAfter, decision: d, body: { error: { code: "quota_unavailable", message: "the quota service cannot be reached; retry shortly" } } };
    }
    const until = new Date(this.now() + d.retryAfterMs).toISOString().replace(/\.\d+Z$/, "Z");
    return {
      status: 429,
      retryAfter,
      decision: d,
      body: { error: { code: "quota_exceeded", message: `the ${d.metric} quota of this account is used up until ${until}` } },
    };
  }

  private rate(waitMs: number): Refusal {
    return {
      status: 429,
      retryAfter: Math.max(1, Math.ceil(waitMs / 1000)),
      decision: { allowed: false, reason: "rate", retryAfterMs: waitMs },
      body: { error: { code: "rate_limited", message: "too many requests; slow down" } },
    };
  }
}

/** What the Express adapter needs of a response (node:http's ServerResponse has it). */
type ResponseLike = Pick<ServerResponse, "statusCode" | "setHeader" | "end" | "headersSent">;

/**
 * Express (or node:http / Connect) middleware: answers 429 with
 * Retry-After for a blocked or rate-limited tenant, user or address (503
 * when the quota API is down and failClosed is set), else calls next.
 */
export function expressQuotaGuard<Req extends RequestLike = RequestLike>(
  opts: EnforceOptions<Req> | Enforcer<Req>,
): (req: Req, res: ResponseLike, next: (err?: unknown) => void) => void {
  const enforcer = opts instanceof Enforcer ? opts : new Enforcer(opts);
  return (req, res, next) => {
    enforcer.decide(req).then((r) => {
      if (!r) return next();
      res.statusCode = r.status;
      res.setHeader("Retry-After", String(r.retryAfter));
      res.setHeader("Content-Type", "application/json");
      res.end(JSON.stringify(r.body) + "\n");
    }, next);
  };
}

/** What the Fastify adapter needs of a reply. */
interface ReplyLike {
  code(status: number): ReplyLike;
  header(name: string, value: string): ReplyLike;
  send(payload: unknown): unknown;
}

/**
 * A Fastify onRequest hook (app.addHook("onRequest", fastifyQuotaGuard({...}))):
 * answers 429 with Retry-After for a blocked or rate-limited tenant, user
 * or address (503 when the quota API is down and failClosed is set).
 */
export function fastifyQuotaGuard<Req extends RequestLike = RequestLike, Reply extends ReplyLike = ReplyLike>(
  opts: EnforceOptions<Req> | Enforcer<Req>,
): (request: Req, reply: Reply) => Promise<Reply | undefined> {
  const enforcer = opts instanceof Enforcer ? opts : new Enforcer(opts);
  return async (request, reply) => {
    const r = await enforcer.decide(request);
    if (!r) return undefined;
    reply.code(r.status).header("retry-after", String(r.retryAfter)).header("content-type", "application/json").send(JSON.stringify(r.body) + "\n");
    return reply;
  };
}

/** Tokens an LLM call used, recorded on a response to be metered after it. */
export interface TokenUsage {
  /** The model, a property of the events (such as "gpt-4o"). */
  model?: string;
  /** Prompt tokens. */
  input?: number | bigint;
  /** Completion tokens. */
  output?: number | bigint;
  /** More properties of the token events. */
  properties?: Record<string, string>;
}

const recorded = new WeakMap<object, TokenUsage[]>();

/**
 * Records an LLM call's tokens on a response (Express's res, Fastify's
 * reply): the metering adapter emits them once the response is done.
 */
export function recordTokens(response: object, usage: TokenUsage): void {
  const list = recorded.get(response) ?? [];
  list.push(usage);
  recorded.set(response, list);
}

/** What the metering adapters emit with: a Client (or anything with its emit). */
export interface Emitter {
  emit(ev: { tenant: string; metric: string; value: number | bigint; source?: string; properties?: Record<string, string> }): MeteringEvent;
}

/** How requests are metered after their response. */
export interface MeterOptions<Req, Res> {
  /** Where events go. */
  client: Emitter;
  /** The tenant a request bills to; undefined: not metered. */
  tenant: (req: Req) => string | undefined;
  /** The metric of one request (default "api_calls"); null meters no requests, only tokens. */
  metric?: string | null;
  /** The metric of recorded tokens (default "tokens"). */
  tokensMetric?: string;
  /** The source of the events. */
  source?: string;
  /** The request event's properties (default: method, route and status). */
  properties?: (req: Req, res: Res, status: number) => Record<string, string> | undefined;
  /** Requests not to meter (such as health checks); tokens recorded on them are still metered. */
  skip?: (req: Req, res: Res, status: number) => boolean;
  /** Receives what could not be emitted (an invalid event, a full queue). */
  onError?: (err: Error) => void;
}

interface ExpressReq extends RequestLike {
  method?: string;
  baseUrl?: string;
  route?: { path?: unknown };
}

interface ExpressRes {
  statusCode: number;
  once(event: "close", listener: () => void): unknown;
}

function emitAll<Req, Res>(opts: MeterOptions<Req, Res>, req: Req, res: Res, status: number, route: string, method: string, tokens: TokenUsage[]): void {
  const tenant = opts.tenant(req);
  if (tenant === undefined || tenant === "") return;
  const emit = (metric: string, value: number | bigint, properties?: Record<string, string>) => {
    try {
      opts.client.emit({ tenant, metric, value, source: opts.source, properties });
    } catch (err) {
      opts.onError?.(err as Error);
    }
  };
  if (opts.metric !== null && !(opts.skip?.(req, res, status) ?? false)) {
    const props = opts.properties ? opts.properties(req, res, status) : { method, route, status: String(status) };
    emit(opts.metric ?? "api_calls", 1, props);
  }
  for (const t of tokens) {
    for (const [kind, n] of [
      ["input", t.input],
      ["output", t.output],
    ] as const) {
      if (n === undefined || n === 0 || n === 0n) continue;
      const props: Record<string, string> = { ...t.properties, kind };
      if (t.model) props.model = t.model;
      emit(opts.tokensMetric ?? "tokens", n, props);
    }
  }
}

/**
 * Express middleware that meters each request once its response is done
 * (finished or closed): one event of metric (value 1, properties method,
 * route and status), and the tokens recorded with recordTokens(res, ...),
 * one event per direction (property kind: input or output, and model).
 */
export function expressMeter<Req extends ExpressReq = ExpressReq, Res extends ExpressRes = ExpressRes>(
  opts: MeterOptions<Req, Res>,
): (req: Req, res: Res, next: () => void) => void {
  return (req, res, next) => {
    res.once("close", () => {
      const route = req.route && typeof req.route.path === "string" ? (req.baseUrl ?? "") + req.route.path : "unmatched";
      emitAll(opts, req, res, res.statusCode, route, req.method ?? "", recorded.get(res) ?? []);
      recorded.delete(res);
    });
    next();
  };
}

interface FastifyReq extends RequestLike {
  method?: string;
  routeOptions?: { url?: string };
}

interface FastifyReply {
  statusCode: number;
}

/**
 * A Fastify onResponse hook (app.addHook("onResponse", fastifyMeter({...})))
 * that meters each request as expressMeter does, with the tokens recorded
 * with recordTokens(reply, ...).
 */
export function fastifyMeter<Req extends FastifyReq = FastifyReq, Reply extends FastifyReply = FastifyReply>(
  opts: MeterOptions<Req, Reply>,
): (request: Req, reply: Reply) => Promise<void> {
  return async (request, reply) => {
    emitAll(opts, request, reply, reply.statusCode, request.routeOptions?.url ?? "unmatched", request.method ?? "", recorded.get(reply) ?? []);
    recorded.delete(reply);
  };
}
