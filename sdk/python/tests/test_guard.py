"""Quota enforcement (QuotaGuard, the FastAPI dependency, the middleware),
token buckets, and request metering, with Starlette's TestClient."""

from __future__ import annotations

import json
from typing import Any, Optional

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from usagemeter import Client, Decision, Event, KeyedLimiter, QuotaGuard, TokenBucket
from usagemeter.asgi import (
    MeterMiddleware,
    QuotaMiddleware,
    RateLimitMiddleware,
    add_tokens,
    client_ip,
    header,
    install_error_handler,
    quota_dependency,
    rate_limit_dependency,
)

T0 = 1795000000.0  # 2026-11-18T...; the quotas below end at 2026-12-01T00:00:00Z
PERIOD_END = "2026-12-01T00:00:00Z"
PERIOD_END_TS = 1796083200.0


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


class QuotaAPI:
    """A mock GET /v1/quotas/{tenant}."""

    def __init__(self, states: dict[str, Any]):
        self.states = states
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        tenant = request.url.path.rsplit("/", 1)[1]
        self.calls.append(tenant)
        assert request.headers["Authorization"] == "Bearer viewer"
        s = self.states.get(tenant)
        if s is None:
            return httpx.Response(404, json={"error": {"code": "not_found", "message": "no tenant"}})
        if isinstance(s, int):
            return httpx.Response(s)
        return httpx.Response(
            200,
            json={
                "tenant": tenant,
                "quotas": [
                    {"metric": m, "state": st, "period_end": PERIOD_END, "limit": 10, "used": 20} for m, st in s
                ],
            },
        )


def guard(api: QuotaAPI, clock: Optional[Clock] = None, **kw: Any) -> QuotaGuard:
    return QuotaGuard("http://metering.test", "viewer", transport=httpx.MockTransport(api), now=clock or Clock(), **kw)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_check_blocked_cached_and_metrics(anyio_backend: str) -> None:
    api = QuotaAPI({"acme": [("api_calls", "blocked"), ("tokens", "warning")], "ok": [("api_calls", "exceeded")]})
    clock = Clock()
    g = guard(api, clock)
    d = await g.check("acme")
    assert not d.allowed and d.reason == "quota" and d.metric == "api_calls"
    assert d.retry_after == pytest.approx(PERIOD_END_TS - T0)
    assert (await g.check("ok")).allowed
    assert (await g.check("ghost")).allowed  # 404: no quotas
    await g.check("acme")
    assert api.calls == ["acme", "ok", "ghost"]  # cached for the TTL
    clock.t += 5.5
    await g.check("acme")
    assert api.calls[-1] == "acme" and len(api.calls) == 4
    clock.t = PERIOD_END_TS + 1  # the period ended: allowed (after a fresh read says so)
    api.states["acme"] = [("api_calls", "ok")]
    assert (await g.check("acme")).allowed
    only_tokens = guard(api, metrics=["tokens"])
    api.states["acme"] = [("api_calls", "blocked")]
    assert (await only_tokens.check("acme")).allowed


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_fail_open_and_closed(anyio_backend: str) -> None:
    api = QuotaAPI({"acme": 500})
    seen: list[str] = []
    d = await guard(api, on_error=lambda t, e: seen.append(t)).check("acme")
    assert d.allowed and d.error is not None and seen == ["acme"]
    d = await guard(api, fail_closed=True, on_error=lambda t, e: None).check("acme")
    assert not d.allowed and d.error is not None
    # Errors are not cached.
    g = guard(api, on_error=lambda t, e: None)
    await g.check("acme")
    await g.check("acme")
    assert api.calls.count("acme") == 4


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_concurrent_checks_read_once(anyio_backend: str) -> None:
    import asyncio

    api = QuotaAPI({"acme": [("api_calls", "ok")]})
    g = guard(api)
    ds = await asyncio.gather(*(g.check("acme") for _ in range(20)))
    assert all(d.allowed for d in ds) and api.calls == ["acme"]


def test_token_bucket() -> None:
    b = TokenBucket(rate=2, burst=3)
    assert [b.take(0.0) for _ in range(3)] == [0, 0, 0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0
    assert b.take(0.5) == pytest.approx(0.5)
    assert b.take(10.0) == 0 and b.tokens == pytest.approx(2)  # refilled to burst, one taken
    with pytest.raises(ValueError):
        TokenBucket(0, 1)


def test_keyed_limiter_is_per_key_and_bounded() -> None:
    clock = Clock(0)
    lim = KeyedLimiter(1, 2, max_keys=2, now=clock)
    assert lim.take("a") == (0, 1) and lim.take("a") == (0, 0)
    wait, _ = lim.take("a")
    assert wait == pytest.approx(1.0)
    assert lim.take("b")[0] == 0
    lim.take("c")  # evicts a, the least recently used
    assert lim.take("a")[0] == 0


def test_guard_rate_limit() -> None:
    import asyncio

    api = QuotaAPI({"acme": [("api_calls", "ok")]})
    g = guard(api, rate_per_second=1, burst=2)

    async def run() -> list[Decision]:
        return [await g.check("acme") for _ in range(3)]

    ds = asyncio.run(run())
    assert [d.allowed for d in ds] == [True, True, False]
    assert ds[2].reason == "rate" and ds[2].retry_after == pytest.approx(1.0)


def fastapi_app(g: QuotaGuard, handler_installed: bool = True) -> FastAPI:
    app = FastAPI()
    if handler_installed:
        install_error_handler(app)
    per_user = KeyedLimiter(rate=1, burst=2, now=Clock())

    @app.get("/work", dependencies=[Depends(quota_dependency(g, header("X-Tenant")))])
    async def work() -> dict[str, str]:
        return {"ok": "yes"}

    @app.get("/limited", dependencies=[Depends(rate_limit_dependency(per_user, header("X-User")))])
    async def limited() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_fastapi_dependency() -> None:
    api = QuotaAPI({"acme": [("api_calls", "blocked")], "fine": [("api_calls", "ok")], "down": 503})
    with TestClient(fastapi_app(guard(api, on_error=lambda t, e: None))) as tc:
        r = tc.get("/work", headers={"X-Tenant": "acme"})
        assert r.status_code == 429
        assert int(r.headers["Retry-After"]) == int(PERIOD_END_TS - T0)
        assert r.json() == {
            "error": {
                "code": "quota_exceeded",
                "message": f"the api_calls quota of this account is used up until {PERIOD_END}",
            }
        }
        assert tc.get("/work", headers={"X-Tenant": "fine"}).status_code == 200
        assert tc.get("/work").status_code == 200  # no tenant: unchecked
        assert tc.get("/work", headers={"X-Tenant": "down"}).status_code == 200  # fail open
        codes = [tc.get("/limited", headers={"X-User": "u1"}).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = tc.get("/limited", headers={"X-User": "u1"})
        assert r.json()["error"]["code"] == "rate_limited" and r.headers["Retry-After"] == "1"
        assert r.headers["RateLimit-Limit"] == "2"
        assert tc.get("/limited", headers={"X-User": "u2"}).status_code == 200

    g = guard(api, fail_closed=True, on_error=lambda t, e: None)
    with TestClient(fastapi_app(g, handler_installed=False)) as tc:
        r = tc.get("/work", headers={"X-Tenant": "down"})
        assert r.status_code == 503 and r.headers["Retry-After"] == "1"
        assert r.json() == {"detail": "the quota service cannot be reached; retry shortly"}


def test_middlewares() -> None:
    api = QuotaAPI({"acme": [("tokens", "blocked")], "fine": []})

    async def hello(request: Request) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(QuotaMiddleware, guard=guard(api), tenant=header("X-Tenant"))
    app.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter(1, 3, now=Clock()), key=client_ip)
    with TestClient(app) as tc:
        r = tc.get("/", headers={"X-Tenant": "acme"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "quota_exceeded"
        assert "tokens quota" in r.json()["error"]["message"]
        assert tc.get("/", headers={"X-Tenant": "fine"}).text == "hi"
        assert tc.get("/").status_code == 200
        r = tc.get("/")  # the fourth request of this IP
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"


def test_meter_middleware_meters_requests_and_tokens_after_the_response() -> None:
    bodies: list[Any] = []

    def ingest(request: httpx.Request) -> httpx.Response:
        bodies.extend(json.loads(request.content))
        return httpx.Response(202, json={"accepted": 1})

    client = Client("http://ingest.test", "k", transport=httpx.MockTransport(ingest), flush_at_exit=False)
    app = FastAPI()
    app.add_middleware(
        MeterMiddleware,
        client=client,
        tenant=header("X-Tenant"),
        source="chat-svc",
        properties=lambda req, status: {"plan": "pro"},
    )
    order: list[str] = []

    @app.post("/chat/{room}")
    async def chat(room: str, request: Request) -> dict[str, int]:
        add_tokens(request, 1200, model="gpt-4")
        add_tokens(request, 300, model="gpt-4")
        add_tokens(request, 50, model="small")
        order.append("handler")
        return {"tokens": 1550}

    with TestClient(app) as tc:
        assert tc.post("/chat/r1", headers={"X-Tenant": "acme"}).json() == {"tokens": 1550}
        assert tc.post("/chat/r1").status_code == 200  # no tenant: not metered
    client.close()
    calls = [b for b in bodies if b["metric"] == "api_calls"]
    tokens = sorted((b["properties"]["model"], b["value"]) for b in bodies if b["metric"] == "tokens")
    assert len(calls) == 1
    assert calls[0]["properties"] == {"method": "POST", "plan": "pro", "route": "/chat/{room}", "status": "200"}
    assert calls[0]["source"] == "chat-svc" and calls[0]["tenant"] == "acme"
    assert tokens == [("gpt-4", 1500), ("small", 50)]


def test_add_tokens_refuses_non_integers() -> None:
    from starlette.requests import Request as StarletteRequest

    req = StarletteRequest({"type": "http", "headers": []})
    for bad in (1.5, -1, True):
        with pytest.raises(ValueError):
            add_tokens(req, bad)  # type: ignore[arg-type]
    add_tokens(req, 3)
    assert req.scope["state"]["usagemeter_tokens"] == [(3, {})]


def test_event_defaults() -> None:
    e = Event("acme", "m", 1)
    assert len(e.id) == 36 and e.id[14] == "7"
    e.validate()
