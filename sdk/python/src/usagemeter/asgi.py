"""Starlette and FastAPI integration: quota enforcement (a dependency and a
middleware), per-user and per-IP token buckets, and metering of each
request (and of LLM tokens) after its response.

Refusals are answered as the metering API answers them: 429 (or 503 for
a guard failing closed) with ``Retry-After`` in whole seconds (at least 1)
and ``{"error": {"code": ..., "message": ...}}``; codes ``quota_exceeded``,
``rate_limited`` and ``quota_unavailable``. Needs ``starlette`` (installed
with FastAPI, or with the ``starlette`` extra).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import logging
import math
from typing import Any, Awaitable, Callable, Mapping, Optional, Union

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._event import Event
from .guard import Decision, KeyedLimiter, QuotaGuard

__all__ = [
    "QuotaExceeded",
    "quota_dependency",
    "QuotaMiddleware",
    "rate_limit_dependency",
    "RateLimitMiddleware",
    "MeterMiddleware",
    "add_tokens",
    "client_ip",
    "header",
    "install_error_handler",
]

log = logging.getLogger("usagemeter")

KeyFunc = Callable[[Request], Optional[str]]


def header(name: str) -> KeyFunc:
    """A key function reading one request header (None when absent)."""

    def key(request: Request) -> Optional[str]:
        return request.headers.get(name) or None

    return key


def client_ip(request: Request) -> Optional[str]:
    """The peer's IP address. Behind a proxy, run uvicorn with
    ``--proxy-headers`` and ``--forwarded-allow-ips`` so that this is the
    client's; a header the client sets itself is never trusted here."""
    return request.client.host if request.client else None


def _seconds(retry_after: float) -> int:
    return max(1, math.ceil(retry_after))


class QuotaExceeded(HTTPException):
    """A refused request: 429 (quota or rate) or 503 (quota unavailable),
    with Retry-After. Without install_error_handler FastAPI answers it as
    any HTTPException (``{"detail": message}``, same status and headers);
    with it, as the metering API answers."""

    def __init__(
        self, status_code: int, code: str, message: str, retry_after: float, headers: Optional[Mapping[str, str]] = None
    ):
        h = {"Retry-After": str(_seconds(retry_after)), **(headers or {})}
        super().__init__(status_code=status_code, detail=message, headers=h)
        self.code = code
        self.message = message

    def response(self) -> Response:
        """The answer, as the metering API writes its errors."""
        return JSONResponse(
            {"error": {"code": self.code, "message": self.message}}, status_code=self.status_code, headers=self.headers
        )

    @classmethod
    def of(cls, d: Decision, now: float) -> "QuotaExceeded":
        """The refusal for a decision that does not allow the request."""
        if d.error is not None:
            return cls(503, "quota_unavailable", "the quota service cannot be reached; retry shortly", d.retry_after)
        if d.reason == "rate":
            return cls(429, "rate_limited", "too many requests; slow down", d.retry_after)
        until = _dt.datetime.fromtimestamp(now + d.retry_after, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return cls(
            429, "quota_exceeded", f"the {d.metric} quota of this account is used up until {until}", d.retry_after
        )


def install_error_handler(app: Any) -> None:
    """Makes a Starlette or FastAPI app answer QuotaExceeded as the
    metering API answers its errors."""

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, QuotaExceeded)
        return exc.response()

    app.add_exception_handler(QuotaExceeded, handler)


def quota_dependency(guard: QuotaGuard, tenant: KeyFunc) -> Callable[[Request], Awaitable[Decision]]:
    """A FastAPI dependency: ``Depends(quota_dependency(guard, header("X-Tenant")))``.
    Raises QuotaExceeded for a refused tenant; returns the Decision (a
    request without a tenant is allowed unchecked)."""

    async def dependency(request: Request) -> Decision:
        t = tenant(request)
        if t is None:
            return Decision(True)
        d = await guard.check(t)
        if not d.allowed:
            raise QuotaExceeded.of(d, guard.now())
        return d

    return dependency


class QuotaMiddleware:
    """ASGI middleware refusing requests of blocked (or rate-limited)
    tenants before they reach the app; requests for which ``tenant``
    returns None pass unchecked.
    ``app.add_middleware(QuotaMiddleware, guard=guard, tenant=header("X-Tenant"))``"""

    def __init__(self, app: ASGIApp, guard: QuotaGuard, tenant: KeyFunc):
        self.app, self.guard, self.tenant = app, guard, tenant

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t = self.tenant(Request(scope))
        if t is not None:
            d = await self.guard.check(t)
            if not d.allowed:
                await QuotaExceeded.of(d, self.guard.now()).response()(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _rate_refusal(limiter: KeyedLimiter, wait: float) -> QuotaExceeded:
    return QuotaExceeded(
        429,
        "rate_limited",
        "too many requests; slow down",
        wait,
        headers={
            "RateLimit-Limit": str(limiter.burst),
            "RateLimit-Remaining": "0",
            "RateLimit-Reset": str(_seconds(wait)),
        },
    )


def rate_limit_dependency(limiter: KeyedLimiter, key: KeyFunc) -> Callable[[Request], Awaitable[None]]:
    """A FastAPI dependency taking one token of key(request)'s bucket
    (``client_ip`` for per-IP, a function returning the user for
    per-user); raises QuotaExceeded (429 rate_limited) when empty."""

    async def dependency(request: Request) -> None:
        k = key(request)
        if k is None:
            return
        wait, _ = limiter.take(k)
        if wait > 0:
            raise _rate_refusal(limiter, wait)

    return dependency


class RateLimitMiddleware:
    """ASGI middleware taking one token per request from the bucket of
    key(request) (default: the client IP); 429 with Retry-After and
    RateLimit-* headers when it is empty. Add it twice for per-IP and
    per-user limits."""

    def __init__(self, app: ASGIApp, limiter: KeyedLimiter, key: KeyFunc = client_ip):
        self.app, self.limiter, self.key = app, limiter, key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            k = self.key(Request(scope))
            if k is not None:
                wait, _ = self.limiter.take(k)
                if wait > 0:
                    await _rate_refusal(self.limiter, wait).response()(scope, receive, send)
                    return
        await self.app(scope, receive, send)


_TOKENS_KEY = "usagemeter_tokens"


def add_tokens(
    request: Request, tokens: int, *, model: Optional[str] = None, properties: Optional[Mapping[str, str]] = None
) -> None:
    """Records LLM tokens used by this request; MeterMiddleware emits them
    (one event per model and property set, values added) after the
    response."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0:
        raise ValueError("tokens must be an integer >= 0")
    state = request.scope.setdefault("state", {})
    props = dict(properties or {})
    if model is not None:
        props["model"] = model
    state.setdefault(_TOKENS_KEY, []).append((tokens, props))


Emitter = Any  # a Client or an AsyncClient


class MeterMiddleware:
    """ASGI middleware that meters each request after its response is
    sent: one ``metric`` event of value 1 (properties: method, route,
    status, plus ``properties(request, status)``), and the tokens recorded
    with add_tokens as ``token_metric`` events. Requests for which
    ``tenant`` returns None are not metered. Emitting never fails the
    request: an event that cannot be queued is logged.
    ``app.add_middleware(MeterMiddleware, client=client, tenant=header("X-Tenant"))``"""

    def __init__(
        self,
        app: ASGIApp,
        client: Emitter,
        tenant: KeyFunc,
        metric: str = "api_calls",
        token_metric: str = "tokens",
        source: str = "",
        properties: Optional[Callable[[Request, int], Mapping[str, str]]] = None,
    ):
        self.app, self.client, self.tenant = app, client, tenant
        self.metric, self.token_metric, self.source = metric, token_metric, source
        self.properties = properties

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            await self._meter(scope, status)

    async def _meter(self, scope: Scope, status: int) -> None:
        request = Request(scope)
        try:
            t = self.tenant(request)
        except Exception:  # noqa: BLE001
            log.exception("usagemeter: finding the tenant of a request")
            return
        if t is None:
            return
        route = scope.get("route")
        props = {
            "method": scope.get("method", ""),
            "status": str(status),
            "route": getattr(route, "path", None) or scope.get("path", ""),
        }
        if self.properties is not None:
            props.update(self.properties(request, status))
        await self._emit(Event(t, self.metric, 1, source=self.source, properties=props))
        totals: dict[tuple[tuple[str, str], ...], int] = {}
        for tokens, p in scope.get("state", {}).get(_TOKENS_KEY, ()):
            k = tuple(sorted(p.items()))
            totals[k] = totals.get(k, 0) + tokens
        for k, tokens in totals.items():
            await self._emit(Event(t, self.token_metric, tokens, source=self.source, properties=dict(k) or None))

    async def _emit(self, e: Event) -> None:
        try:
            r: Union[bool, Awaitable[bool]] = self.client.emit(e)
            if inspect.isawaitable(r):
                await r
        except Exception:  # noqa: BLE001 - metering must not fail the request
            log.exception("usagemeter: metering a request")
