"""A FastAPI service metered and guarded by the usagemeter SDK.

    pip install "usagemeter-metering[starlette]" fastapi uvicorn
    METERING_URL=http://127.0.0.1:8080 METERING_KEY=<a write key> METERING_READ_KEY=<a viewer key> \\
        uvicorn app:app --port 9000
    curl -X POST localhost:9000/v1/chat -H 'X-Tenant: acme' -H 'X-User: u1' -d '{"prompt": "hi"}'

- A tenant whose quota is blocked gets 429 with Retry-After (QuotaMiddleware).
- Each client IP may make 20 requests a second (burst 40), each user 5 (burst 10).
- Every request is metered as one ``api_calls`` event after its response,
  and the LLM tokens it used as ``tokens`` events per model.
"""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request

from usagemeter import AsyncClient, KeyedLimiter, QuotaGuard
from usagemeter.asgi import (
    MeterMiddleware,
    QuotaMiddleware,
    RateLimitMiddleware,
    add_tokens,
    client_ip,
    header,
    install_error_handler,
    rate_limit_dependency,
)

METERING_URL = os.environ.get("METERING_URL", "http://127.0.0.1:8080")
METERING_KEY = os.environ.get("METERING_KEY", "")
METERING_READ_KEY = os.environ.get("METERING_READ_KEY", METERING_KEY)

client = AsyncClient(METERING_URL, METERING_KEY, batch_size=200, flush_interval=1.0)
guard = QuotaGuard(METERING_URL, METERING_READ_KEY, ttl=5.0, fail_closed=False)
per_user = KeyedLimiter(rate=5, burst=10)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await client.aclose()  # delivers what is queued
    await guard.aclose()


app = FastAPI(lifespan=lifespan)
install_error_handler(app)
# Middleware added last runs first: per-IP limit, then the quota, then metering.
app.add_middleware(MeterMiddleware, client=client, tenant=header("X-Tenant"), source="example-chat")
app.add_middleware(QuotaMiddleware, guard=guard, tenant=header("X-Tenant"))
app.add_middleware(RateLimitMiddleware, limiter=KeyedLimiter(rate=20, burst=40), key=client_ip)


def fake_llm(prompt: str) -> tuple[str, int, int]:
    """Stands in for a model call: the answer and its input and output tokens."""
    answer = prompt[::-1]
    return answer, len(prompt.split()) + 3, len(answer.split()) + 5


@app.post("/v1/chat", dependencies=[Depends(rate_limit_dependency(per_user, header("X-User")))])
async def chat(request: Request) -> dict[str, object]:
    body = await request.json()
    answer, tokens_in, tokens_out = fake_llm(str(body.get("prompt", "")))
    add_tokens(request, tokens_in, model="small-1", properties={"direction": "input"})
    add_tokens(request, tokens_out, model="small-1", properties={"direction": "output"})
    return {"answer": answer, "tokens": tokens_in + tokens_out}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
