"""Quota enforcement and token buckets, independent of any web framework.

QuotaGuard mirrors the Go SDK's events.NewQuotaGuard: quota states read
from GET /v1/quotas/{tenant}, cached per tenant for ``ttl`` seconds (one
read at a time per tenant); a tenant with a ``blocked`` quota is refused
until the end of that quota's period; when the API cannot be read the
request goes through (fail open, the error reported to ``on_error``)
unless ``fail_closed``. Errors are not cached: the next request reads
again. An unknown tenant (404) has no quotas.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote

import httpx

from ._core import user_agent
from ._event import parse_time

__all__ = ["Decision", "QuotaGuard", "TokenBucket", "KeyedLimiter"]

log = logging.getLogger("usagemeter")

MAX_QUOTA_ANSWER = 1 << 20
"""The largest quota answer the guard reads, in bytes."""


@dataclass
class Decision:
    """The verdict for one request.

    ``allowed`` False comes with ``reason`` "quota" (``metric`` is the
    blocked one) or "rate", or with ``error`` set when the quota API could
    not be read and the guard fails closed. ``retry_after`` is in seconds.
    """

    allowed: bool
    metric: str = ""
    retry_after: float = 0.0
    reason: str = ""
    error: Optional[BaseException] = None


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second.

    Not thread-safe by itself; KeyedLimiter locks around it."""

    def __init__(self, rate: float, burst: int):
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = float(rate), burst
        self.tokens = float(burst)
        self.last: Optional[float] = None

    def take(self, now: float, n: int = 1) -> float:
        """Takes n tokens at now (seconds) and returns 0, or, when there are
        not enough, takes none and returns the seconds until there are."""
        if self.last is not None and now > self.last:
            self.tokens = min(float(self.burst), self.tokens + (now - self.last) * self.rate)
        if self.last is None or now > self.last:
            self.last = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (n - self.tokens) / self.rate


class KeyedLimiter:
    """One TokenBucket per key (a user, an IP address, a tenant), the
    ``max_keys`` most recently used kept (the others start full again).
    Thread-safe."""

    def __init__(
        self,
        rate: float,
        burst: Optional[int] = None,
        *,
        max_keys: int = 100_000,
        now: Callable[[], float] = time.monotonic,
    ):
        self.rate = float(rate)
        self.burst = burst if burst is not None and burst > 0 else max(1, int(rate))
        TokenBucket(self.rate, self.burst)  # checks the settings
        self.max_keys = max_keys
        self.now = now
        self._buckets: "collections.OrderedDict[str, TokenBucket]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, n: int = 1) -> tuple[float, int]:
        """Takes n tokens of key's bucket: (0, tokens left) when allowed,
        else (seconds to wait, 0)."""
        now = self.now()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                b = TokenBucket(self.rate, self.burst)
                self._buckets[key] = b
                if len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            wait = b.take(now, n)
            return wait, int(b.tokens) if wait == 0 else 0


@dataclass
class _Entry:
    blocked_until: Optional[float]  # epoch seconds; None: not blocked
    metric: str
    expires: float


class QuotaGuard:
    """Refuses tenants whose quota is blocked (see the module doc), and
    optionally limits each tenant's request rate (``rate_per_second``,
    ``burst``).

    ``api_key`` reads quotas: a viewer key, an admin key, or a tenant's
    read key for that tenant. ``metrics`` limits enforcement to those
    metrics (default: every quota of the tenant's plan). ``now`` returns
    epoch seconds (for tests)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        metrics: Optional[Sequence[str]] = None,
        ttl: float = 5.0,
        fail_closed: bool = False,
        on_error: Optional[Callable[[str, BaseException], None]] = None,
        rate_per_second: float = 0.0,
        burst: int = 0,
        timeout: float = 2.0,
        http_client: Optional[httpx.AsyncClient] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        now: Callable[[], float] = time.time,
    ):
        if not base_url:
            raise ValueError("base_url is required")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.metrics = set(metrics or ())
        self.ttl = ttl if ttl > 0 else 5.0
        self.fail_closed = fail_closed
        self.on_error = on_error
        self.now = now
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self._own_http = http_client is None
        self._cache: dict[str, _Entry] = {}
        self._flights: dict[str, "asyncio.Future[_Entry]"] = {}
        self._rate = KeyedLimiter(rate_per_second, burst, now=now) if rate_per_second > 0 else None

    async def aclose(self) -> None:
        """Closes the HTTP client the guard made."""
        if self._own_http:
            await self._http.aclose()

    async def check(self, tenant: str) -> Decision:
        """The decision for tenant now, from the cache or a fresh read."""
        now = self.now()
        if self._rate is not None:
            wait, _ = self._rate.take(tenant)
            if wait > 0:
                return Decision(False, retry_after=wait, reason="rate")
        e = self._cache.get(tenant)
        if e is None or now > e.expires:
            try:
                e = await self._fetch_once(tenant, now)
            except Exception as err:  # noqa: BLE001 - any failure to read is the API being unavailable
                if self.on_error is not None:
                    self.on_error(tenant, err)
                else:
                    log.warning("usagemeter: reading quotas of %s: %s", tenant, err)
                return Decision(not self.fail_closed, retry_after=1.0, error=err)
        if e.blocked_until is not None and now < e.blocked_until:
            return Decision(False, metric=e.metric, retry_after=e.blocked_until - now, reason="quota")
        return Decision(True)

    async def _fetch_once(self, tenant: str, now: float) -> _Entry:
        f = self._flights.get(tenant)
        if f is not None:
            return await asyncio.shield(f)
        f = asyncio.get_running_loop().create_future()
        self._flights[tenant] = f
        try:
            e = await self._fetch(tenant, now)
        except BaseException as err:
            f.set_exception(err)
            f.exception()  # retrieved: no "never retrieved" warning when no one else waits
            raise
        else:
            f.set_result(e)
            return e
        finally:
            del self._flights[tenant]

    async def _fetch(self, tenant: str, now: float) -> _Entry:
        resp = await self._http.get(
            f"{self.base_url}/v1/quotas/{quote(tenant, safe='')}",
            headers={"Authorization": "Bearer " + self.api_key, "User-Agent": user_agent()},
        )
        e = _Entry(None, "", now + self.ttl)
        if resp.status_code == 404:  # an unregistered tenant has no quotas
            self._store(tenant, e)
            return e
        if resp.status_code != 200:
            raise RuntimeError(f"reading quotas of {tenant}: HTTP {resp.status_code}")
        if len(resp.content) > MAX_QUOTA_ANSWER:
            raise RuntimeError(f"reading quotas of {tenant}: answer over {MAX_QUOTA_ANSWER} bytes")
        body: Any = resp.json()
        for q in body.get("quotas") or ():
            if q.get("state") != "blocked" or (self.metrics and q.get("metric") not in self.metrics):
                continue
            ns = parse_time(str(q.get("period_end", "")))
            if ns is None:
                raise RuntimeError(f"reading quotas of {tenant}: period_end {q.get('period_end')!r} is not a time")
            end = ns / 1e9
            if e.blocked_until is None or end > e.blocked_until:
                e.blocked_until, e.metric = end, str(q.get("metric", ""))
        self._store(tenant, e)
        return e

    def _store(self, tenant: str, e: _Entry) -> None:
        if len(self._cache) >= 100_000:
            now = self.now()
            for k in [k for k, v in self._cache.items() if v.expires < now]:
                del self._cache[k]
        self._cache[tenant] = e
