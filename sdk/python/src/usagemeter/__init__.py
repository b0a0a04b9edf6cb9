"""Python SDK of the usage metering API.

Events are validated with the rules and messages of the Go ``events``
package and encoded byte for byte as it encodes them (checked against the
shared conformance vectors), then sent by ``Client`` (a background
thread) or ``AsyncClient`` (an asyncio task) in batches to POST
/v1/events, retried with the same ids. ``usagemeter.asgi`` enforces
quotas and rate limits in Starlette and FastAPI apps and meters their
requests.
"""

from ._core import (
    APIError,
    ClientClosedError,
    DeliveryError,
    Overflow,
    QueueFullError,
    RetryPolicy,
)
from ._event import (
    MAX_PROPERTIES,
    MAX_VALUE,
    Event,
    FieldError,
    ValidationError,
    Validator,
    new_id,
)

__version__ = "0.1.0"

from .aio import AsyncClient  # noqa: E402
from .client import Client  # noqa: E402
from .guard import Decision, KeyedLimiter, QuotaGuard, TokenBucket  # noqa: E402

__all__ = [
    "APIError",
    "AsyncClient",
    "Client",
    "ClientClosedError",
    "Decision",
    "DeliveryError",
    "Event",
    "FieldError",
    "KeyedLimiter",
    "MAX_PROPERTIES",
    "MAX_VALUE",
    "Overflow",
    "QueueFullError",
    "QuotaGuard",
    "RetryPolicy",
    "TokenBucket",
    "ValidationError",
    "Validator",
    "new_id",
    "__version__",
]
