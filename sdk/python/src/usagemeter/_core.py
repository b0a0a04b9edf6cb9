"""What the sync and async clients share: settings, the retry policy, how
an answer of POST /v1/events is judged, and the error types."""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

import httpx

from ._event import Event, FieldError

__all__ = [
    "APIError",
    "DeliveryError",
    "QueueFullError",
    "ClientClosedError",
    "RetryPolicy",
    "Overflow",
]

log = logging.getLogger("usagemeter")

MAX_BATCH_EVENTS = 1000
"""The most events the API takes in one request."""
DEFAULT_MAX_BATCH_BYTES = 4 * 1024 * 1024
"""The largest request body the clients build (the API's default limit is 5 MiB)."""

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
"""Answers after which the same request is sent again, unchanged."""


class Overflow:
    """What ``emit`` does when the queue holds ``max_queue_size`` events.

    - ``BLOCK`` (default): wait up to ``block_timeout`` seconds for room,
      then raise QueueFullError; the event is not queued.
    - ``DROP_NEWEST``: do not queue the event; emit returns False and the
      ``dropped`` counter grows.
    - ``RAISE``: raise QueueFullError at once.

    Events already queued are never dropped to make room."""

    BLOCK = "block"
    DROP_NEWEST = "drop_newest"
    RAISE = "raise"
    ALL = (BLOCK, DROP_NEWEST, RAISE)


class APIError(Exception):
    """A non-2xx answer of the metering API."""

    def __init__(self, status: int, code: str, message: str, body: Any = None):
        self.status, self.code, self.message, self.body = status, code, message, body
        super().__init__(f"HTTP {status} {code}: {message}" if code else f"HTTP {status}: {message}")


class DeliveryError(Exception):
    """Events that were not delivered, handed to ``on_error``.

    ``events`` are the events concerned, unchanged: resending them later is
    safe, their ids make it count once. ``field_errors`` (for a 400 of the
    API) index into ``events``. ``retriable`` says whether sending them
    again may succeed (it failed on time, a closed client, or retries
    exhausted) or not (the API refused them)."""

    def __init__(
        self,
        message: str,
        events: Sequence[Event],
        *,
        status: Optional[int] = None,
        field_errors: Sequence[FieldError] = (),
        retriable: bool = False,
        cause: Optional[BaseException] = None,
    ):
        self.events = list(events)
        self.status = status
        self.field_errors = list(field_errors)
        self.retriable = retriable
        self.__cause__ = cause
        super().__init__(message)


class QueueFullError(Exception):
    """The event could not be queued: the queue is full (see Overflow)."""


class ClientClosedError(Exception):
    """The client is closed and takes no more events."""


@dataclass
class RetryPolicy:
    """How a request answered 408/425/429/5xx, or not answered, is sent
    again: the same body, so the same ids.

    A ``Retry-After`` on the answer is honoured (capped at
    ``max_retry_after`` seconds); otherwise the wait is exponential from
    ``initial`` to ``maximum`` seconds with jitter (half to all of it).
    After ``max_retries`` retries the events go to ``on_error``."""

    max_retries: int = 10
    initial: float = 0.2
    maximum: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: Optional[float]) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        backoff: float = min(self.maximum, self.initial * 2.0 ** min(attempt, 60))
        return backoff / 2 + random.random() * backoff / 2


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds of a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(int(value))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def error_of(resp: httpx.Response) -> APIError:
    """The API's ``{"error":{"code","message"}}`` answer as an APIError."""
    code, message, body = "", resp.reason_phrase, None
    try:
        body = resp.json()
        err = body.get("error") if isinstance(body, dict) else None
        if isinstance(err, dict):
            code = str(err.get("code", ""))
            message = str(err.get("message", message))
    except ValueError:
        pass
    return APIError(resp.status_code, code, message, body)


@dataclass
class Item:
    """A queued event and its canonical encoding."""

    event: Event
    data: bytes
    queued_at: float = 0.0


@dataclass
class Outcome:
    """What to do after one POST /v1/events."""

    kind: str  # "ok", "retry", "fail" or "split"
    retry_after: Optional[float] = None
    error: Optional[BaseException] = None
    status: Optional[int] = None
    rest: list[Item] = field(default_factory=list)
    rejected: list[Item] = field(default_factory=list)
    field_errors: list[FieldError] = field(default_factory=list)


def judge(resp: httpx.Response, items: list[Item]) -> Outcome:
    """Judges the answer to a batch: accepted, to retry unchanged, refused
    in part (the events the API named are dropped, the rest resent), or
    failed."""
    status = resp.status_code
    if 200 <= status < 300:
        return Outcome("ok", status=status)
    if status in RETRY_STATUSES:
        return Outcome(
            "retry", retry_after=parse_retry_after(resp.headers.get("Retry-After")), error=error_of(resp), status=status
        )
    if status == 400:
        try:
            body = resp.json()
        except ValueError:
            body = None
        errs = body.get("errors") if isinstance(body, dict) else None
        if isinstance(errs, list) and errs:
            bad: dict[int, list[FieldError]] = {}
            for e in errs:
                if isinstance(e, dict) and isinstance(e.get("index"), int) and 0 <= e["index"] < len(items):
                    bad.setdefault(e["index"], []).append(
                        FieldError(str(e.get("field", "")), str(e.get("message", "")), e["index"])
                    )
            if bad:
                rejected = [items[i] for i in sorted(bad)]
                new_index = {old: new for new, old in enumerate(sorted(bad))}
                fes = [FieldError(fe.field, fe.message, new_index[i]) for i in sorted(bad) for fe in bad[i]]
                rest = [it for i, it in enumerate(items) if i not in bad]
                return Outcome(
                    "split",
                    status=status,
                    rest=rest,
                    rejected=rejected,
                    field_errors=fes,
                    error=APIError(400, "invalid_events", "the API refused some events", body),
                )
    return Outcome("fail", error=error_of(resp), status=status)


def batch_body(items: Sequence[Item]) -> bytes:
    """A JSON array of the items' canonical encodings."""
    return b"[" + b",".join(it.data for it in items) + b"]"


class Stats:
    """Counters of a client, in events (``requests`` and ``retries`` in
    requests); thread-safe."""

    FIELDS = ("emitted", "dropped", "accepted", "failed", "rejected", "requests", "retries")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c = {k: 0 for k in self.FIELDS}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._c[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._c)


def default_on_error(err: DeliveryError) -> None:
    """Logs undelivered events with their ids, so they can be found."""
    log.error(
        "usagemeter: %s (%d events, ids %s)",
        err,
        len(err.events),
        ", ".join(e.id for e in err.events[:10]) + (" ..." if len(err.events) > 10 else ""),
    )


def read_params(
    tenant: Optional[str],
    metric: Optional[str],
    meter: Optional[str],
    window: Optional[str],
    start: Any,
    end: Any,
    group_by: Optional[Sequence[str]],
    filters: Optional[Mapping[str, str]],
) -> list[tuple[str, str]]:
    """The query of GET /v1/usage."""
    import datetime as _dt

    from ._event import datetime_ns, format_time

    def t(v: Any) -> str:
        if isinstance(v, _dt.datetime):
            return format_time(datetime_ns(v))
        return str(v)

    if (metric is None) == (meter is None):
        raise ValueError("give exactly one of metric and meter")
    q: list[tuple[str, str]] = []
    if tenant is not None:
        q.append(("tenant", tenant))
    if metric is not None:
        q.append(("metric", metric))
    if meter is not None:
        q.append(("meter", meter))
    if window is not None:
        q.append(("window", window))
    if start is not None:
        q.append(("from", t(start)))
    if end is not None:
        q.append(("to", t(end)))
    for g in group_by or ():
        q.append(("group_by", g))
    for k, v in (filters or {}).items():
        q.append((f"filter[{k}]", v))
    return q


def user_agent() -> str:
    from . import __version__

    return f"usagemeter-python/{__version__} httpx/{httpx.__version__}"


Sleep = Callable[[float], None]
