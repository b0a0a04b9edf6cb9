"""The asyncio client: events batched by a background task, and reads of
usage and quotas."""

from __future__ import annotations

import asyncio
import atexit
import collections
import time
import weakref
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Sequence

import httpx

from ._core import (
    DEFAULT_MAX_BATCH_BYTES,
    RETRY_STATUSES,
    ClientClosedError,
    DeliveryError,
    Item,
    Outcome,
    Overflow,
    QueueFullError,
    RetryPolicy,
    Stats,
    batch_body,
    error_of,
    judge,
    parse_retry_after,
    read_params,
)
from ._event import Event, ValidationError, Validator
from .client import _Collect, _Settings, send_items_sync, settle, take_batch

__all__ = ["AsyncClient"]


async def send_items_async(
    settings: _Settings,
    http: httpx.AsyncClient,
    items: list[Item],
    stats: Stats,
    sleep: Callable[[float], Awaitable[Any]],
    deadline: Callable[[], Optional[float]],
) -> None:
    """The async twin of client.send_items_sync."""
    attempt = 0
    url = settings.base_url + "/v1/events"
    headers = {**settings.headers(), "Content-Type": "application/json"}
    while items:
        stats.add("requests")
        try:
            resp = await http.post(url, content=batch_body(items), headers=headers)
            outcome = judge(resp, items)
        except httpx.TransportError as err:
            outcome = Outcome("retry", error=err)
        items, wait = settle(settings, stats, items, outcome, attempt, deadline)
        if wait is not None:
            await sleep(wait)
            attempt += 1


class AsyncClient:
    """The asyncio twin of Client: the same batching, retries, overflow
    policy and callbacks, with ``await emit(...)``, ``await flush()`` and
    ``await aclose()`` (or ``async with``).

    The sending task starts on the first emit, in the running loop. Close
    it before the loop ends; events still queued when the interpreter
    exits without that are sent by a synchronous sender at exit
    (``flush_at_exit``), within ``close_timeout``.
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
        http_client: Optional[httpx.AsyncClient] = None,
        transport: Optional[httpx.AsyncBaseTransport] = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
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
        self._http = http_client or httpx.AsyncClient(timeout=timeout, transport=transport)
        self._sleep = sleep
        self.stats = Stats()
        self._queue: collections.deque[Item] = collections.deque()
        self._cv: Optional[asyncio.Condition] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._enqueued = 0
        self._settled = 0
        self._flush_target = 0
        self._closing = False
        self._closed = False
        self._deadline: Optional[float] = None
        self._atexit: Optional[Callable[[], None]] = None
        if flush_at_exit:
            ref = weakref.ref(self)

            def at_exit() -> None:
                c = ref()
                if c is not None:
                    c._send_left_at_exit()

            self._atexit = at_exit
            atexit.register(at_exit)

    def _condition(self) -> asyncio.Condition:
        if self._cv is None:
            self._cv = asyncio.Condition()
        if self._task is None or self._task.done() and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="usagemeter-sender")
        return self._cv

    async def emit(self, event: Event) -> bool:
        """Validates event and queues it; see Client.emit."""
        item = self._s.prepare(event)
        if self._closing:
            raise ClientClosedError("the client is closed")
        cv = self._condition()
        async with cv:
            if len(self._queue) >= self._s.max_queue_size:
                if self._s.overflow == Overflow.DROP_NEWEST:
                    self.stats.add("dropped")
                    return False
                if self._s.overflow == Overflow.RAISE:
                    raise QueueFullError(f"the queue holds {self._s.max_queue_size} events")
                try:
                    await asyncio.wait_for(
                        cv.wait_for(lambda: len(self._queue) < self._s.max_queue_size or self._closing),
                        self._s.block_timeout,
                    )
                except asyncio.TimeoutError:
                    raise QueueFullError(
                        f"the queue stayed full ({self._s.max_queue_size} events) for {self._s.block_timeout}s"
                    ) from None
                if self._closing:
                    raise ClientClosedError("the client is closed")
            self._queue.append(item)
            self._enqueued += 1
            self.stats.add("emitted")
            if len(self._queue) >= self._s.batch_size or len(self._queue) == 1:
                cv.notify_all()
        return True

    async def send(self, events: Iterable[Event]) -> None:
        """Sends events now with the same retries; see Client.send."""
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
            await send_items_async(
                _Collect(self._s, failures), self._http, batch, self.stats, self._sleep, lambda: None
            )
        if failures:
            raise failures[0]

    async def flush(self, timeout: Optional[float] = None) -> bool:
        """Waits until every event emitted so far is delivered or handed to
        on_error; False if timeout passed first."""
        if self._cv is None:
            return True
        cv = self._condition()
        async with cv:
            target = self._enqueued
            self._flush_target = max(self._flush_target, target)
            cv.notify_all()
            try:
                await asyncio.wait_for(cv.wait_for(lambda: self._settled >= target), timeout)
            except asyncio.TimeoutError:
                return False
        return True

    async def aclose(self, timeout: Optional[float] = None) -> None:
        """Flushes within timeout (default close_timeout) seconds, stops the
        sender and hands what is still queued to on_error. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closing = True
        wait = self._s.close_timeout if timeout is None else timeout
        self._deadline = time.monotonic() + wait
        if self._cv is not None and self._task is not None:
            async with self._cv:
                self._cv.notify_all()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), max(0.0, wait) + 1.0)
            except asyncio.TimeoutError:
                self._task.cancel()
        left = list(self._queue)
        self._queue.clear()
        if left:
            self.stats.add("failed", len(left))
            self._s.report(
                DeliveryError("not delivered: the client closed first", [it.event for it in left], retriable=True)
            )
        if self._own_http:
            await self._http.aclose()
        if self._atexit is not None:
            atexit.unregister(self._atexit)
            self._atexit = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _run(self) -> None:
        assert self._cv is not None
        cv = self._cv
        while True:
            async with cv:
                await cv.wait_for(lambda: bool(self._queue) or self._closing)
                if not self._queue:
                    return
                while (
                    len(self._queue) < self._s.batch_size and not self._closing and self._flush_target <= self._settled
                ):
                    left = self._queue[0].queued_at + self._s.flush_interval - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(cv.wait(), left)
                    except asyncio.TimeoutError:
                        break
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    return
                batch = take_batch(self._queue, self._s.batch_size, self._s.max_batch_bytes)
                cv.notify_all()
            try:
                await send_items_async(self._s, self._http, batch, self.stats, self._sleep, lambda: self._deadline)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))  # close() reports them
                raise
            except Exception as err:  # noqa: BLE001 - keep the sender alive; report the batch
                self.stats.add("failed", len(batch))
                self._s.report(
                    DeliveryError(f"not delivered: {err!r}", [it.event for it in batch], retriable=True, cause=err)
                )
            async with cv:
                self._settled += len(batch)
                cv.notify_all()

    def _send_left_at_exit(self) -> None:
        """At interpreter exit without aclose: sends what is queued with a
        synchronous client."""
        if self._closed or not self._queue:
            return
        self._closed = self._closing = True
        items = list(self._queue)
        self._queue.clear()
        deadline = time.monotonic() + self._s.close_timeout
        with httpx.Client(timeout=self._s.timeout) as http:
            q = collections.deque(items)
            while q:
                batch = take_batch(q, self._s.batch_size, self._s.max_batch_bytes)
                send_items_sync(self._s, http, batch, self.stats, time.sleep, lambda: deadline)

    # -- reading ---------------------------------------------------------

    async def _get(self, path: str, params: Any) -> Any:
        attempt = 0
        while True:
            try:
                resp = await self._http.get(self._s.base_url + path, params=params, headers=self._s.headers())
            except httpx.TransportError:
                if attempt >= self._s.retry.max_retries:
                    raise
                await self._sleep(self._s.retry.delay(attempt, None))
                attempt += 1
                continue
            if resp.status_code == 200:
                return resp.json()
            if resp.status_code in RETRY_STATUSES and attempt < self._s.retry.max_retries:
                await self._sleep(self._s.retry.delay(attempt, parse_retry_after(resp.headers.get("Retry-After"))))
                attempt += 1
                continue
            raise error_of(resp)

    async def usage(
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
        """GET /v1/usage; see Client.usage."""
        q = read_params(tenant, metric, meter, window, start, end, group_by, filters)
        result: dict[str, Any] = await self._get("/v1/usage", q)
        return result

    async def quotas(self, tenant: str) -> dict[str, Any]:
        """GET /v1/quotas/{tenant}; see Client.quotas."""
        from urllib.parse import quote

        result: dict[str, Any] = await self._get("/v1/quotas/" + quote(tenant, safe=""), None)
        return result
