"""End to end against the pipeline of tools/sdkstack (METERING_SDKSTACK
holds its JSON line; scripts/sdk-python.sh starts it): events sent through
the fault proxy while it answers storms of 503 and 429, before and after
ingest accepted them, are each counted exactly once; and a blocked
tenant is refused by the quota guard."""

from __future__ import annotations

import datetime as dt
import json
import os
import secrets
import time
from typing import Any

import httpx
import pytest

from usagemeter import APIError, AsyncClient, Client, DeliveryError, Event, QuotaGuard, RetryPolicy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    raw = os.environ.get("METERING_SDKSTACK")
    if not raw:
        if os.environ.get("CI") == "true":
            pytest.fail("METERING_SDKSTACK is not set: run scripts/sdk-python.sh, which starts tools/sdkstack")
        pytest.skip("METERING_SDKSTACK is not set (scripts/sdk-python.sh sets it)")
    info: dict[str, Any] = json.loads(raw)
    return info


def storm(stack: dict[str, Any], count: int, status: int, mode: str, retry_after: int = 1) -> None:
    r = httpx.post(
        f"{stack['control_url']}/storm",
        params={"count": count, "status": status, "mode": mode, "retry_after": retry_after},
    )
    r.raise_for_status()


def stats(stack: dict[str, Any]) -> dict[str, int]:
    r = httpx.get(f"{stack['control_url']}/stats")
    r.raise_for_status()
    out: dict[str, int] = r.json()
    return out


def wait_counted(c: Client, tenant: str, metric: str, value: int, events: int, timeout: float = 120) -> dict[str, Any]:
    """Polls GET /v1/usage until the aggregator has counted the events."""
    now = dt.datetime.now(dt.timezone.utc)
    deadline = time.monotonic() + timeout
    u: dict[str, Any] = {}
    while time.monotonic() < deadline:
        u = c.usage(
            tenant=tenant,
            metric=metric,
            window="hour",
            start=now - dt.timedelta(hours=3),
            end=now + dt.timedelta(hours=1),
        )
        if sum(w["events"] for w in u["windows"]) >= events and u["total"] >= value:
            break
        time.sleep(0.5)
    return u


def test_every_event_counts_once_through_storms(stack: dict[str, Any]) -> None:
    tenant = "sdk-py-" + secrets.token_hex(4)
    errors: list[DeliveryError] = []
    before = stats(stack)
    # Storms queued now hit the first requests; more are added while sending.
    storm(stack, 2, 503, "before")
    storm(stack, 2, 503, "after")
    storm(stack, 2, 429, "before")
    storm(stack, 2, 429, "after")
    c = Client(
        stack["url"],
        stack["admin_key"],
        batch_size=50,
        flush_interval=0.2,
        on_error=errors.append,
        retry=RetryPolicy(max_retries=20),
        flush_at_exit=False,
    )
    total = 0
    n = 2000
    for i in range(n):
        v = (i * 7919) % 1000 + 1
        total += v
        c.emit(Event(tenant, "api_calls", v, source="sdk-e2e", properties={"batch": str(i % 3)}))
        if i == 700:
            storm(stack, 3, 503, "after")
        if i == 1400:
            storm(stack, 3, 429, "after", retry_after=2)
            storm(stack, 1, 503, "before")
    assert c.flush(timeout=240)
    s = c.stats.snapshot()
    assert errors == [], errors
    assert s["accepted"] == n and s["failed"] == 0 and s["retries"] >= 15
    after = stats(stack)
    assert after["faulted_after"] - before["faulted_after"] == 10
    assert after["faulted_before"] - before["faulted_before"] == 5
    assert after["forwarded_accepted"] - before["forwarded_accepted"] == 10  # these were resent: duplicates

    u = wait_counted(c, tenant, "api_calls", total, n)
    assert u["total"] == total
    assert sum(w["value"] for w in u["windows"]) == total
    assert sum(w["events"] for w in u["windows"]) == n
    c.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_async_client_through_storms(stack: dict[str, Any], anyio_backend: str) -> None:
    tenant = "sdk-py-async-" + secrets.token_hex(4)
    storm(stack, 2, 503, "after")
    storm(stack, 1, 429, "before")
    errors: list[DeliveryError] = []
    total = 0
    async with AsyncClient(
        stack["url"],
        stack["admin_key"],
        batch_size=100,
        flush_interval=0.2,
        on_error=errors.append,
        flush_at_exit=False,
    ) as c:
        for i in range(500):
            total += i
            await c.emit(Event(tenant, "tokens", i, properties={"model": "m" + str(i % 2)}))
        assert await c.flush(timeout=120)
        assert errors == []
    with Client(stack["url"], stack["admin_key"], flush_at_exit=False) as reader:
        u = wait_counted(reader, tenant, "tokens", total, 500)
    assert u["total"] == total and sum(w["events"] for w in u["windows"]) == 500


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_quota_guard_refuses_a_blocked_tenant(stack: dict[str, Any], anyio_backend: str) -> None:
    suffix = secrets.token_hex(4)
    plan, tenant = "sdk-py-plan-" + suffix, "sdk-py-q-" + suffix
    admin = {"Authorization": "Bearer " + stack["admin_key"]}
    base = stack["direct_url"]
    async with httpx.AsyncClient(headers=admin) as http:
        r = await http.put(
            f"{base}/v1/admin/plans/{plan}",
            json={
                "quotas": [{"metric": "api_calls", "limit": 10, "period": "month", "burst_percent": 0, "hard": True}]
            },
        )
        assert r.status_code in (200, 201), r.text
        r = await http.put(f"{base}/v1/admin/tenants/{tenant}", json={"plan": plan})
        assert r.status_code in (200, 201), r.text
    guard = QuotaGuard(base, stack["admin_key"], ttl=0.2)
    assert (await guard.check(tenant)).allowed
    with Client(stack["url"], stack["admin_key"], flush_at_exit=False) as c:
        c.send([Event(tenant, "api_calls", 50)])
        q: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            q = c.quotas(tenant)
            if q["quotas"] and q["quotas"][0]["state"] == "blocked":
                break
            time.sleep(0.3)
        assert q["quotas"][0]["state"] == "blocked", q
    time.sleep(0.3)
    d = await guard.check(tenant)
    assert not d.allowed and d.reason == "quota" and d.metric == "api_calls" and d.retry_after > 0
    await guard.aclose()


def test_stack_proxies_reads_and_reports_stats(stack: dict[str, Any]) -> None:
    s = stats(stack)
    assert set(s) >= {"proxied", "faulted", "faulted_before", "faulted_after", "events_requests"}
    with Client(stack["url"], stack["admin_key"], flush_at_exit=False) as c:
        with pytest.raises(APIError) as info:
            c.quotas("sdk-py-nobody-" + secrets.token_hex(2))
    assert info.value.status == 404
    assert stats(stack)["proxied"] == s["proxied"] + 1


def test_example_app_meters_requests_and_tokens(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    import pathlib

    from starlette.testclient import TestClient

    tenant = "sdk-py-example-" + secrets.token_hex(4)
    monkeypatch.setenv("METERING_URL", stack["url"])
    monkeypatch.setenv("METERING_KEY", stack["admin_key"])
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "app.py"
    spec = importlib.util.spec_from_file_location("usagemeter_example_app", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with TestClient(mod.app) as tc:
        for _ in range(3):
            r = tc.post("/v1/chat", headers={"X-Tenant": tenant, "X-User": "u1"}, json={"prompt": "one two three"})
            assert r.status_code == 200, r.text
    # The app's lifespan closed its client: everything is delivered.
    with Client(stack["url"], stack["admin_key"], flush_at_exit=False) as c:
        calls = wait_counted(c, tenant, "api_calls", 3, 3)
        # Per request: input 3 words + 3, output 3 words + 5.
        tokens = wait_counted(c, tenant, "tokens", 3 * (6 + 8), 6)
    assert calls["total"] == 3
    assert tokens["total"] == 42 and sum(w["events"] for w in tokens["windows"]) == 6
