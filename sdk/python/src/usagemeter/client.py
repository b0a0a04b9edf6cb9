"""The synchronous client: events batched by a background thread, and
reads of usage and quotas."""

from __future__ import annotations

import atexit
import collections
import threading
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import httpx

from ._core import (
    DEFAULT_MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    RETRY_STATUSES,
    APIError,
    ClientClosedError,
    DeliveryError,
    Item,
    Outcome,
    Overflow,
    QueueFullError,
    RetryPolicy,
    Stats,
    batch_body,
    default_on_error,
    error_of,
    judge,
    parse_retry_after,
    read_params,
    user_agent,
)
from ._event import Event, ValidationError, Validator

__all__ = ["Client"]


def take_batch(queue: "collections.deque[Item]", size: int, max_bytes: int) -> list[Item]:
    """Takes from the left of queue at most size items whose body fits in
    max_bytes (always at least one)."""
    batch: list[Item] = []
    n = 2
    while queue and len(batch) < size:
        extra = len(queue[0].data) + 1
        if batch and n + extra > max_bytes:
            break
        batch.append(queue.popleft())
        n += extra
    return batch


class _Settings:
    """Settings shared by Client and AsyncClient, checked once."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        batch_size: int,
        flush_interval: float,
        max_queue_size: int,
        overflow: str,
        block_timeout: float,
        retry: Optional[RetryPolicy],
        timeout: float,
        validator: Optional[Validator],
        on_error: Optional[Callable[[DeliveryError], None]],
        close_timeout: float,
        max_batch_bytes: int,
    ):
        if not base_url:
            raise ValueError("base_url is required, such as http://127.0.0.1:8080")
        if not 1 <= batch_size <= MAX_BATCH_EVENTS:
            raise ValueError(f"batch_size must be 1 to {MAX_BATCH_EVENTS}")
        if overflow not in Overflow.ALL:
            raise ValueError(f"overflow must be one of {Overflow.ALL}")
        if max_queue_size < batch_size:
            raise ValueError("max_queue_size must be at least batch_size")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queue_size = max_queue_size
        self.overflow = overflow
        self.block_timeout = block_timeout
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.validator = validator or Validator()
        self.on_error = on_error or default_on_error
        self.close_timeout = close_timeout
        self.max_batch_bytes = max_batch_bytes

    def headers(self) -> dict[str, str]:
        h = {"User-Agent": user_agent()}
        if self.api_key:
            h["Authorization"] = "Bearer " + self.api_key
        return h

    def prepare(self, event: Event) -> Item:
        """Validates event (raising ValidationError) and encodes it."""
        errs = self.validator.validate(event)
        if errs:
            raise ValidationError(errs)
        return Item(event, event.canonical_json(), time.monotonic())

    def report(self, err: DeliveryError) -> None:
        try:
            self.on_error(err)
        except Exception:  # noqa: BLE001 - a broken callback must not stop delivery
            default_on_error(err)


def settle(
    settings: _Settings,
    stats: Stats,
    items: list[Item],
    outcome: Outcome,
    attempt: int,
    deadline: Callable[[], Optional[float]],
) -> tuple[list[Item], Optional[float]]:
    """Acts on the outcome of one POST of items (the part both clients
    share): counts it, reports what will never be delivered to on_error,
    and returns the items still to send (empty when done) and how long to
    wait before sending them again (None: at once, as the same attempt,
    after the API named the events it refused). deadline() is the
    monotonic time after which no retry is waited for, or None."""
    if outcome.kind == "ok":
        stats.add("accepted", len(items))
        return [], None
    if outcome.kind == "split":
        stats.add("rejected", len(outcome.rejected))
        settings.report(
            DeliveryError(
                f"the API refused {len(outcome.rejected)} events: "
                + "; ".join(str(e) for e in outcome.field_errors[:5]),
                [it.event for it in outcome.rejected],
                status=400,
                field_errors=outcome.field_errors,
                cause=outcome.error,
            )
        )
        return outcome.rest, None
    if outcome.kind == "fail":
        stats.add("failed", len(items))
        settings.report(
            DeliveryError(
                f"the API refused the batch: {outcome.error}",
                [it.event for it in items],
                status=outcome.status,
                cause=outcome.error,
            )
        )
        return [], None
    wait = settings.retry.delay(attempt, outcome.retry_after)
    end = deadline()
    if attempt >= settings.retry.max_retries or (end is not None and time.monotonic() + wait > end):
        stats.add("failed", len(items))
        why = "retries exhausted" if attempt >= settings.retry.max_retries else "the client closed first"
        settings.report(
            DeliveryError(
                f"not delivered ({why}): {outcome.error}",
                [it.event for it in items],
                status=outcome.status,
                retriable=True,
                cause=outcome.error,
            )
        )
        return [], None
    stats.add("retries")
    return items, wait


def send_items_sync(
    settings: _Settings,
    http: httpx.Client,
    items: list[Item],
    stats: Stats,
    sleep: Callable[[float], None],
    deadline: Callable[[], Optional[float]],
) -> None:
    """Delivers one batch with retries, reporting what fails to on_error
    (see settle)."""
    attempt = 0
    url = settings.base_url + "/v1/events"
    headers = {**settings.headers(), "Content-Type": "application/json"}
    while items:
        stats.add("requests")
        try:
            resp = http.post(url, content=batch_body(items), headers=headers)
            outcome = judge(resp, items)
        except httpx.TransportError as err:
            outcome = Outcome("retry", error=err)
        items, wait = settle(settings, stats, items, outcome, attempt, deadline)
        if wait is not None:
            sleep(wait)
            attempt += 1


def get_json_sync(
    settings: _Settings, http: httpx.Client, path: str, params: Any, sleep: Callable[[float], None]
) -> Any:
    """GET path, retrying 429/503 and transport errors like a batch."""
    attempt = 0
    while True:
        try:
            resp = http.get(settings.base_url + path, params=params, headers=settings.headers())
        except httpx.TransportError:
            if attempt >= settings.retry.max_retries:
                raise
            sleep(settings.retry.delay(attempt, None))
            attempt += 1
            continue
        if resp.status_code == 200:
            return resp.json()
        if resp.status_code in RETRY_STATUSES and attempt < settings.retry.max_retries:
            sleep(settings.retry.delay(attempt, parse_retry_after(resp.headers.get("Retry-After"))))
            attempt += 1
            continue
        raise error_of(resp)


class Client:
    """Sends usage events to the metering API (POST /v1/events) and reads
    usage and quotas.

    ``emit`` validates an event with the contract's rules (raising
    ValidationError at once) and queues it; a background thread sends
    batches of up to ``batch_size`` events, or what is queued once the
    oldest event has waited ``flush_interval`` seconds. A batch answered
    408/425/429/5xx, or not answered, is sent again unchanged (same ids,
    so it counts once) after ``Retry-After`` or an exponential backoff
    (see RetryPolicy). A 400 names the refused events: they go to
    ``on_error`` and the rest is sent again. What cannot be delivered goes
    to ``on_error`` as a DeliveryError holding the events.

    The queue holds at most ``max_queue_size`` events; ``overflow`` says
    what ``emit`` does when it is full (see Overflow). ``flush()`` waits
    until every event emitted before it is settled; ``close()`` (also on
    ``with`` exit and at interpreter exit) flushes within ``close_timeout``
    seconds and hands what is left to ``on_error``.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str = "",
        *,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queue_size: int = 10_000,
        overflow: str = Overflow.BLOCK,
        block_timeout: float = 5.0,
        retry: Optional[RetryPolicy] = None,
        timeout: float = 10.0,
        validator: Optional[Validator] = None,
        on_error: Optional[Callable[[DeliveryError], None]] = None,
        close_timeout: float = 30.0,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        http_client: Optional[httpx.Client] = None,
        transport: Optional[httpx.BaseTransport] = None,
        sleep: Callable[[float], None] = time.sleep,
        flush_at_exit: bool = True,
    ):
        self._s = _Settings(
            base_url,
            api_key,
            batch_size,
            flush_interval,
            max_queue_size,
            overflow,
            block_timeout,
            retry,
            timeout,
            validator,
            on_error,
            close_timeout,
            max_batch_bytes,
        )
        self._own_http = http_client is None
        self._http = http_client or httpx.Client(timeout=timeout, transport=transport)
        self._sleep = sleep
        self.stats = Stats()
        self._queue: collections.deque[Item] = collections.deque()
        self._cv = threading.Condition()
        self._enqueued = 0
        self._settled = 0
        self._flush_target = 0
        self._closing = False
        self._closed = False
        self._deadline: Optional[float] = None
        self._worker = threading.Thread(target=self._run, name="usagemeter-sender", daemon=True)
        self._worker.start()
        self._atexit: Optional[Callable[[], None]] = None
        if flush_at_exit:
            ref = weakref.ref(self)

            def at_exit() -> None:
                c = ref()
                if c is not None:
                    c.close()

            self._atexit = at_exit
            atexit.register(at_exit)

    # -- sending ---------------------------------------------------------

    def emit(self, event: Event) -> bool:
        """Validates event and queues it; True when queued, False when
        dropped by the DROP_NEWEST overflow policy. Raises ValidationError,
        QueueFullError (BLOCK after block_timeout, or RAISE) or
        ClientClosedError."""
        item = self._s.prepare(event)
        with self._cv:
            if self._closing:
                raise ClientClosedError("the client is closed")
            if len(self._queue) >= self._s.max_queue_size:
                if self._s.overflow == Overflow.DROP_NEWEST:
                    self.stats.add("dropped")
                    return False
                if self._s.overflow == Overflow.RAISE:
                    raise QueueFullError(f"the queue holds {self._s.max_queue_size} events")
                end = time.monotonic() + self._s.block_timeout
                while len(self._queue) >= self._s.max_queue_size and not self._closing:
                    left = end - time.monotonic()
                    if left <= 0:
                        raise QueueFullError(
                            f"the queue stayed full ({self._s.max_queue_size} events) for {self._s.block_timeout}s"
                        )
                    self._cv.wait(left)
                if self._closing:
                    raise ClientClosedError("the client is closed")
            self._queue.append(item)
            self._enqueued += 1
            self.stats.add("emitted")
            if len(self._queue) >= self._s.batch_size or len(self._queue) == 1:
                self._cv.notify_all()
        return True

    def send(self, events: Iterable[Event]) -> None:
        """Sends events now, in the calling thread, in batches with the
        same retries; raises ValidationError before sending anything if one
        is invalid, and the first DeliveryError after trying them all."""
        items, errs = [], []
        for i, e in enumerate(events):
            try:
                items.append(self._s.prepare(e))
            except ValidationError as ve:
                errs += [type(fe)(fe.field, fe.message, i) for fe in ve.errors]
        if errs:
            raise ValidationError(errs)
        failures: list[DeliveryError] = []
        queue = collections.deque(items)
        while queue:
            batch = take_batch(queue, self._s.batch_size, self._s.max_batch_bytes)
            send_items_sync(_Collect(self._s, failures), self._http, batch, self.stats, self._sleep, lambda: None)
        if failures:
            raise failures[0]

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every event emitted so far is delivered or handed
        to on_error; False if timeout (seconds) passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            target = self._enqueued
            self._flush_target = max(self._flush_target, target)
            self._cv.notify_all()
            while self._settled < target:
                if not self._worker.is_alive():
                    return False
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left if left is not None else 0.5)
        return True

    def close(self, timeout: Optional[float] = None) -> None:
        """Flushes within timeout (default close_timeout) seconds, stops
        the sender and hands what is still queued to on_error. Idempotent."""
        with self._cv:
            if self._closed:
                return
            self._closed = True
            self._closing = True
            wait = self._s.close_timeout if timeout is None else timeout
            self._deadline = time.monotonic() + wait
            self._cv.notify_all()
        self._worker.join(max(0.0, wait) + 1.0)
        with self._cv:
            left = list(self._queue)
            self._queue.clear()
        if left:
            self.stats.add("failed", len(left))
            self._s.report(
                DeliveryError("not delivered: the client closed first", [it.event for it in left], retriable=True)
            )
        if self._own_http:
            self._http.close()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closing:
                    self._cv.wait()
                if not self._queue:
                    return
                while (
                    len(self._queue) < self._s.batch_size and not self._closing and self._flush_target <= self._settled
                ):
                    left = self._queue[0].queued_at + self._s.flush_interval - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    return
                batch = take_batch(self._queue, self._s.batch_size, self._s.max_batch_bytes)
                self._cv.notify_all()  # room for blocked emitters
            try:
                send_items_sync(self._s, self._http, batch, self.stats, self._sleep, lambda: self._deadline)
            except Exception as err:  # noqa: BLE001 - keep the sender alive; report the batch
                self.stats.add("failed", len(batch))
                self._s.report(
                    DeliveryError(f"not delivered: {err!r}", [it.event for it in batch], retriable=True, cause=err)
                )
            with self._cv:
                self._settled += len(batch)
                self._cv.notify_all()

    # -- reading ---------------------------------------------------------

    def usage(
        self,
        *,
        tenant: Optional[str] = None,
        metric: Optional[str] = None,
        meter: Optional[str] = None,
        window: Optional[str] = None,
        start: Any = None,
        end: Any = None,
        group_by: Optional[Sequence[str]] = None,
        filters: Optional[Mapping[str, str]] = None,
    ) -> dict[str, Any]:
        """GET /v1/usage: the windows of one metric (or meter) of a tenant.
        start and end are datetimes or RFC 3339 strings (from inclusive,
        to exclusive). Values are exact Python ints. Raises APIError."""
        q = read_params(tenant, metric, meter, window, start, end, group_by, filters)
        result: dict[str, Any] = get_json_sync(self._s, self._http, "/v1/usage", q, self._sleep)
        return result

    def quotas(self, tenant: str) -> dict[str, Any]:
        """GET /v1/quotas/{tenant}: the tenant's plan and each quota's
        limit, use and state (ok, warning, exceeded, blocked). Raises
        APIError."""
        from urllib.parse import quote

        result: dict[str, Any] = get_json_sync(
            self._s, self._http, "/v1/quotas/" + quote(tenant, safe=""), None, self._sleep
        )
        return result


class _Collect(_Settings):
    """Settings whose on_error collects into a list (for Client.send)."""

    def __init__(self, base: _Settings, into: list[DeliveryError]):
        self.__dict__.update(base.__dict__)
        self.on_error = into.append


__all__ += ["APIError", "Overflow"]
