"""The sync client against mock transports: batching, retries honouring
Retry-After, resends with the same ids, partial refusals, overflow,
flush and close, and flush at interpreter exit."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Optional

import httpx
import pytest

from usagemeter import (
    APIError,
    Client,
    ClientClosedError,
    DeliveryError,
    Event,
    Overflow,
    QueueFullError,
    RetryPolicy,
    ValidationError,
)
from usagemeter._core import parse_retry_after


class Recorder:
    """A mock ingest: answers from a script of statuses, records bodies."""

    def __init__(self, script: Optional[list[Any]] = None):
        self.script = list(script or [])
        self.bodies: list[list[dict[str, Any]]] = []
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            body = json.loads(request.content)
            self.bodies.append(body)
            step = self.script.pop(0) if self.script else 202
        if callable(step):
            return step(request, body)
        if isinstance(step, tuple):
            status, headers = step
        else:
            status, headers = step, {}
        if status == 202:
            return httpx.Response(202, json={"accepted": len(body)})
        return httpx.Response(status, headers=headers, json={"error": {"code": "x", "message": "try later"}})

    def ids(self, i: int) -> list[str]:
        return [e["id"] for e in self.bodies[i]]


def make(rec: Recorder, **kw: Any) -> tuple[Client, list[float], list[DeliveryError]]:
    sleeps: list[float] = []
    errors: list[DeliveryError] = []
    kw.setdefault("flush_interval", 0.05)
    c = Client(
        "http://ingest.test",
        "key",
        transport=httpx.MockTransport(rec),
        sleep=sleeps.append,
        on_error=errors.append,
        flush_at_exit=False,
        **kw,
    )
    return c, sleeps, errors


def ev(i: int = 0, **kw: Any) -> Event:
    return Event("acme", "api_calls", i, **kw)


def test_batches_by_size_and_sends_canonical_json() -> None:
    rec = Recorder()
    c, _, errors = make(rec, batch_size=10, flush_interval=60)
    events = [ev(i) for i in range(25)]
    for e in events:
        assert c.emit(e)
    assert c.flush(timeout=5)
    c.close()
    assert [len(b) for b in rec.bodies] == [10, 10, 5]
    sent = [e for b in rec.bodies for e in b]
    assert [e["id"] for e in sent] == [e.id for e in events]
    assert sent[3] == json.loads(events[3].canonical_json())
    assert errors == []
    assert c.stats.snapshot()["accepted"] == 25


def test_time_flushes_a_partial_batch() -> None:
    rec = Recorder()
    c, _, _ = make(rec, batch_size=100, flush_interval=0.05)
    c.emit(ev(1))
    deadline = time.monotonic() + 5
    while not rec.bodies and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(rec.bodies) == 1
    c.close()


@pytest.mark.parametrize(
    "status,headers,want_sleep",
    [
        (503, {"Retry-After": "3"}, 3.0),
        (429, {"Retry-After": "7"}, 7.0),
        (503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a past date: at once
    ],
)
def test_retries_honour_retry_after_and_resend_same_ids(
    status: int, headers: dict[str, str], want_sleep: float
) -> None:
    rec = Recorder([(status, headers), (status, headers), 202])
    c, sleeps, errors = make(rec, batch_size=5)
    for i in range(5):
        c.emit(ev(i))
    assert c.flush(timeout=5)
    c.close()
    assert len(rec.bodies) == 3
    assert rec.ids(0) == rec.ids(1) == rec.ids(2)
    assert rec.bodies[0] == rec.bodies[2]
    assert sleeps == [want_sleep, want_sleep]
    assert errors == []
    s = c.stats.snapshot()
    assert (s["retries"], s["accepted"], s["requests"]) == (2, 5, 3)


def test_backoff_without_retry_after_grows_and_is_capped() -> None:
    rec = Recorder([502, 500, 504, 503, 503, 202])
    c, sleeps, _ = make(rec, batch_size=1, retry=RetryPolicy(initial=1, maximum=4))
    c.emit(ev())
    assert c.flush(timeout=5)
    c.close()
    assert len(sleeps) == 5
    for s, cap in zip(sleeps, [1, 2, 4, 4, 4], strict=True):
        assert cap / 2 <= s <= cap


def test_transport_errors_are_retried() -> None:
    calls = []

    def flaky(request: httpx.Request, body: Any) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    rec = Recorder([flaky, flaky])
    orig = rec.__call__

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return orig(request)

    sleeps: list[float] = []
    c = Client(
        "http://ingest.test",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        flush_interval=0.01,
        flush_at_exit=False,
    )
    c.emit(ev())
    assert c.flush(timeout=5)
    c.close()
    assert len(calls) == 3 and len(sleeps) == 2


def test_retries_exhausted_go_to_on_error_with_the_events() -> None:
    rec = Recorder([503] * 10)
    c, sleeps, errors = make(rec, batch_size=2, retry=RetryPolicy(max_retries=3))
    a, b = ev(1), ev(2)
    c.emit(a)
    c.emit(b)
    assert c.flush(timeout=5)
    c.close()
    assert len(rec.bodies) == 4 and len(sleeps) == 3
    assert len(errors) == 1 and errors[0].retriable and errors[0].status == 503
    assert errors[0].events == [a, b]
    assert c.stats.snapshot()["failed"] == 2


def test_a_400_drops_the_named_events_and_resends_the_rest() -> None:
    def refuse(request: httpx.Request, body: Any) -> httpx.Response:
        return httpx.Response(
            400,
            json={
                "errors": [
                    {
                        "index": 1,
                        "field": "time",
                        "message": "is 6m0s ahead of the server clock; at most 5m0s is allowed",
                    }
                ]
            },
        )

    rec = Recorder([refuse, 202])
    c, _, errors = make(rec, batch_size=3)
    events = [ev(i) for i in range(3)]
    for e in events:
        c.emit(e)
    assert c.flush(timeout=5)
    c.close()
    assert rec.ids(1) == [events[0].id, events[2].id]
    assert len(errors) == 1 and errors[0].events == [events[1]] and not errors[0].retriable
    assert errors[0].field_errors[0].field == "time" and errors[0].field_errors[0].index == 0
    assert c.stats.snapshot()["rejected"] == 1


@pytest.mark.parametrize("status", [401, 403, 413, 415])
def test_other_refusals_fail_the_batch(status: int) -> None:
    rec = Recorder([status])
    c, sleeps, errors = make(rec, batch_size=1)
    c.emit(ev())
    assert c.flush(timeout=5)
    c.close()
    assert sleeps == [] and len(errors) == 1 and errors[0].status == status


def test_emit_validates_at_once() -> None:
    rec = Recorder()
    c, _, _ = make(rec)
    with pytest.raises(ValidationError) as info:
        c.emit(Event("acme", "a b", -1))
    assert {e.field for e in info.value.errors} == {"metric", "value"}
    with pytest.raises(ValidationError):
        c.emit(Event("acme", "m", 1, properties={"region": "eu", "Region": "us"}))
    c.close()
    assert rec.bodies == []


def _stalled(rec_release: threading.Event) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        rec_release.wait(10)
        return httpx.Response(202, json={"accepted": 1})

    return handler


def test_overflow_drop_newest() -> None:
    release = threading.Event()
    c = Client(
        "http://ingest.test",
        transport=httpx.MockTransport(_stalled(release)),
        batch_size=1,
        max_queue_size=2,
        overflow=Overflow.DROP_NEWEST,
        flush_interval=0.01,
        flush_at_exit=False,
    )
    c.emit(ev(0))
    time.sleep(0.2)  # the sender holds event 0 in flight
    assert c.emit(ev(1)) and c.emit(ev(2))
    assert c.emit(ev(3)) is False
    assert c.stats.snapshot()["dropped"] == 1
    release.set()
    assert c.flush(timeout=5)
    c.close()
    assert c.stats.snapshot()["accepted"] == 3


def test_overflow_raise_and_block() -> None:
    release = threading.Event()
    for policy in (Overflow.RAISE, Overflow.BLOCK):
        c = Client(
            "http://ingest.test",
            transport=httpx.MockTransport(_stalled(release)),
            batch_size=1,
            max_queue_size=1,
            overflow=policy,
            block_timeout=0.2,
            flush_interval=0.01,
            flush_at_exit=False,
        )
        c.emit(ev(0))
        time.sleep(0.2)
        c.emit(ev(1))
        started = time.monotonic()
        with pytest.raises(QueueFullError):
            c.emit(ev(2))
        waited = time.monotonic() - started
        assert (waited >= 0.2) == (policy == Overflow.BLOCK)
        release.set()
        c.close()
        release.clear()


def test_block_waits_for_room() -> None:
    release = threading.Event()
    c = Client(
        "http://ingest.test",
        transport=httpx.MockTransport(_stalled(release)),
        batch_size=1,
        max_queue_size=1,
        block_timeout=5,
        flush_interval=0.01,
        flush_at_exit=False,
    )
    c.emit(ev(0))
    time.sleep(0.2)
    c.emit(ev(1))
    threading.Timer(0.3, release.set).start()
    assert c.emit(ev(2))  # blocks until the sender takes event 1
    c.close()
    assert c.stats.snapshot()["accepted"] == 3


def test_close_flushes_and_refuses_more() -> None:
    rec = Recorder()
    c, _, _ = make(rec, batch_size=100, flush_interval=60)
    for i in range(7):
        c.emit(ev(i))
    c.close()
    assert sum(len(b) for b in rec.bodies) == 7
    with pytest.raises(ClientClosedError):
        c.emit(ev())
    c.close()  # idempotent


def test_close_timeout_hands_the_rest_to_on_error() -> None:
    rec = Recorder([(503, {"Retry-After": "60"})] * 5)
    c, sleeps, errors = make(rec, batch_size=10, flush_interval=60)
    for i in range(4):
        c.emit(ev(i))
    c.close(timeout=0.5)
    assert len(rec.bodies) == 1 and sleeps == []  # a 60 s wait does not fit in the close timeout
    assert sum(len(e.events) for e in errors) == 4
    assert all(e.retriable and "closed first" in str(e) for e in errors)


def test_send_now_and_reads() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"accepted": 1})
        if request.url.path == "/v1/usage":
            assert request.url.params.get_list("group_by") == ["model"]
            assert request.url.params["filter[model]"] == "gpt-4"
            assert request.headers["Authorization"] == "Bearer key"
            return httpx.Response(200, content=b'{"total":123456789012345678901234567890,"windows":[]}')
        if request.url.path == "/v1/quotas/acme":
            return httpx.Response(200, json={"tenant": "acme", "quotas": []})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no tenant"}})

    with Client("http://ingest.test/", "key", transport=httpx.MockTransport(handler), flush_at_exit=False) as c:
        c.send([ev(1), ev(2)])
        u = c.usage(
            tenant="acme",
            meter="tokens_by_model",
            group_by=["model"],
            filters={"model": "gpt-4"},
            start="2026-11-01T00:00:00Z",
            end="2026-12-01T00:00:00Z",
            window="day",
        )
        assert u["total"] == 123456789012345678901234567890
        assert c.quotas("acme")["tenant"] == "acme"
        with pytest.raises(APIError) as info:
            c.quotas("nobody")
        assert info.value.status == 404 and info.value.code == "not_found"
        with pytest.raises(ValueError):
            c.usage(tenant="acme")


def test_reads_retry_after_503() -> None:
    answers = [httpx.Response(503, headers={"Retry-After": "2"}), httpx.Response(200, json={"total": 1})]
    sleeps: list[float] = []
    with Client(
        "http://x", transport=httpx.MockTransport(lambda r: answers.pop(0)), sleep=sleeps.append, flush_at_exit=False
    ) as c:
        assert c.usage(metric="m")["total"] == 1
    assert sleeps == [2.0]


def test_parse_retry_after() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == 10.0


class _Ingest(http.server.BaseHTTPRequestHandler):
    received: list[Any] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.extend(json.loads(body))
        self.send_response(202)
        self.end_headers()
        self.wfile.write(b'{"accepted":1}')

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_flush_at_interpreter_exit(kind: str) -> None:
    _Ingest.received = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ingest)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    src = pathlib.Path(__file__).resolve().parents[1] / "src"
    if kind == "sync":
        script = f"""
import usagemeter
c = usagemeter.Client({url!r}, "k", batch_size=100, flush_interval=3600)
for i in range(42):
    c.emit(usagemeter.Event("acme", "api_calls", i))
"""
    else:
        script = f"""
import asyncio, usagemeter
c = usagemeter.AsyncClient({url!r}, "k", batch_size=100, flush_interval=3600)
async def main():
    for i in range(42):
        await c.emit(usagemeter.Event("acme", "api_calls", i))
asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=60)
    srv.shutdown()
    assert sorted(e["value"] for e in _Ingest.received) == list(range(42))
