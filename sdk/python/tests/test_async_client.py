"""The asyncio client against mock transports."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from usagemeter import AsyncClient, ClientClosedError, DeliveryError, Event, Overflow, QueueFullError, RetryPolicy

pytestmark = pytest.mark.anyio


class Script:
    def __init__(self, *answers: Any):
        self.answers = list(answers)
        self.bodies: list[list[dict[str, Any]]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"tenant": "acme", "quotas": [], "total": 5})
        body = json.loads(request.content)
        self.bodies.append(body)
        a = self.answers.pop(0) if self.answers else 202
        if isinstance(a, tuple):
            return httpx.Response(a[0], headers=a[1], json={"error": {"code": "x", "message": "y"}})
        if a == "hang":
            await asyncio.sleep(10)
        return httpx.Response(a if isinstance(a, int) else 202, json={"accepted": len(body)})


def client(script: Script, **kw: Any) -> tuple[AsyncClient, list[float], list[DeliveryError]]:
    sleeps: list[float] = []
    errors: list[DeliveryError] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    kw.setdefault("flush_interval", 0.05)
    c = AsyncClient(
        "http://ingest.test",
        "key",
        transport=httpx.MockTransport(script),
        sleep=sleep,
        on_error=errors.append,
        flush_at_exit=False,
        **kw,
    )
    return c, sleeps, errors


async def test_batches_retries_and_same_ids() -> None:
    s = Script((503, {"Retry-After": "2"}), (429, {"Retry-After": "1"}), 202, 202)
    c, sleeps, errors = client(s, batch_size=10)
    events = [Event("acme", "api_calls", i) for i in range(15)]
    for e in events:
        assert await c.emit(e)
    assert await c.flush(timeout=5)
    await c.aclose()
    assert [len(b) for b in s.bodies] == [10, 10, 10, 5]
    assert s.bodies[0] == s.bodies[1] == s.bodies[2]
    assert [e["id"] for b in s.bodies[2:] for e in b] == [e.id for e in events]
    assert sleeps == [2.0, 1.0] and errors == []


async def test_exhausted_and_refused() -> None:
    s = Script(503, 503, 403)
    c, _, errors = client(s, batch_size=1, retry=RetryPolicy(max_retries=1))
    await c.emit(Event("acme", "m", 1))
    assert await c.flush(timeout=5)
    await c.emit(Event("acme", "m", 2))
    await c.aclose()
    assert [e.status for e in errors] == [503, 403]
    assert [e.retriable for e in errors] == [True, False]


async def test_overflow_policies() -> None:
    for policy in (Overflow.DROP_NEWEST, Overflow.RAISE, Overflow.BLOCK):
        s = Script("hang")
        c, _, _ = client(s, batch_size=1, max_queue_size=1, overflow=policy, block_timeout=0.1)
        await c.emit(Event("acme", "m", 0))
        await asyncio.sleep(0.1)  # in flight
        await c.emit(Event("acme", "m", 1))
        if policy == Overflow.DROP_NEWEST:
            assert await c.emit(Event("acme", "m", 2)) is False
            assert c.stats.snapshot()["dropped"] == 1
        else:
            with pytest.raises(QueueFullError):
                await c.emit(Event("acme", "m", 2))
        await c.aclose(timeout=0.2)


async def test_close_flushes_and_refuses_more() -> None:
    s = Script()
    c, _, _ = client(s, batch_size=100, flush_interval=60)
    for i in range(5):
        await c.emit(Event("acme", "m", i))
    await c.aclose()
    assert sum(len(b) for b in s.bodies) == 5
    with pytest.raises(ClientClosedError):
        await c.emit(Event("acme", "m", 1))


async def test_reads() -> None:
    s = Script()
    async with AsyncClient("http://x", "k", transport=httpx.MockTransport(s), flush_at_exit=False) as c:
        assert (await c.quotas("acme"))["tenant"] == "acme"
        assert (await c.usage(tenant="acme", metric="m"))["total"] == 5
        await c.send([Event("acme", "m", 1)])
    assert len(s.bodies) == 1
