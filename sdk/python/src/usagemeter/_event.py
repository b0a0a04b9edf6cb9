"""The event contract: an event's fields, its validation and its canonical
JSON encoding, rule for rule and message for message as the Go ``events``
package (checked against ``testdata/conformance/events.json``)."""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Union

from . import _gofmt

MAX_ID_LEN = 128
"""The longest idempotency id, in bytes of printable ASCII."""
MAX_NAME_LEN = 128
"""The longest tenant or metric name."""
MAX_VALUE = 1 << 53
"""The largest value an event may carry: 2^53."""
MAX_SOURCE_LEN = 256
"""The longest source, in bytes."""
MAX_PROPERTIES = 32
"""The most properties an event may carry."""
MAX_PROPERTY_KEY_LEN = 128
"""The longest property key, in bytes."""
MAX_PROPERTY_VALUE_LEN = 1024
"""The longest property value, in bytes."""
DEFAULT_HORIZON_NS = 35 * 24 * 3600 * 1_000_000_000
"""How old an event may be (35 days), in nanoseconds."""
DEFAULT_MAX_FUTURE_NS = 5 * 60 * 1_000_000_000
"""How far ahead of the clock an event may be (5 minutes), in nanoseconds."""

_NS = 1_000_000_000
# Go's zero time.Time, 0001-01-01T00:00:00Z, which Go treats as "no time".
_GO_ZERO_NS = -62135596800 * _NS

TimeLike = Union[_dt.datetime, str, None]


@dataclass(frozen=True)
class FieldError:
    """One reason an event was refused: the field (such as ``value`` or
    ``properties.region``) and a message saying what is wrong."""

    field: str
    message: str
    index: int = 0

    def __str__(self) -> str:
        return f"event {self.index}: {self.field}: {self.message}"


class ValidationError(ValueError):
    """Every field error of one or more events."""

    def __init__(self, errors: list[FieldError]):
        self.errors = list(errors)
        if len(self.errors) == 1:
            msg = "invalid event: " + str(self.errors[0])
        else:
            msg = f"{len(self.errors)} invalid fields: " + "; ".join(str(e) for e in self.errors)
        super().__init__(msg)


# ---------------------------------------------------------------------------
# UUIDv7

_uuid_lock = threading.Lock()
_uuid_last = 0  # the last (unix ms << 12 | sub-ms sequence) handed out


def new_id() -> str:
    """A new UUIDv7: time-ordered, so ids of nearby events sort together
    (strictly increasing within this process)."""
    global _uuid_last
    ns = _time.time_ns()
    ms = ns // 1_000_000
    sub = (ns % 1_000_000) * 4096 // 1_000_000
    with _uuid_lock:
        stamp = max((ms << 12) | sub, _uuid_last + 1)
        _uuid_last = stamp
    ms, rand_a = stamp >> 12, stamp & 0xFFF
    rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    n = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# ---------------------------------------------------------------------------
# Times, in integer nanoseconds since the Unix epoch (UTC).

_RFC3339 = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:[.,](\d+))?(Z|[+-]\d{2}:\d{2})\Z")


def _days_from_civil(y: int, m: int, d: int) -> int:
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _civil_from_days(z: int) -> tuple[int, int, int]:
    z += 719468
    era = (z if z >= 0 else z - 146096) // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    y = yoe + era * 400
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = mp + (3 if mp < 10 else -9)
    return y + (m <= 2), m, d


def _days_in_month(y: int, m: int) -> int:
    if m == 2:
        return 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
    return 30 if m in (4, 6, 9, 11) else 31


def parse_time(s: str) -> Optional[int]:
    """Parses an RFC 3339 timestamp as Go's time.Parse(time.RFC3339Nano)
    does, to nanoseconds since the epoch; None when it is not one."""
    m = _RFC3339.match(s)
    if not m:
        return None
    y, mo, d, h, mi, sec = (int(g) for g in m.groups()[:6])
    frac, zone = m.group(7), m.group(8)
    if not (1 <= mo <= 12 and 1 <= d <= _days_in_month(y, mo) and h < 24 and mi < 60 and sec < 60):
        return None
    ns = 0
    if frac is not None:
        ns = int((frac[:9]).ljust(9, "0"))
    offset = 0
    if zone != "Z":
        oh, om = int(zone[1:3]), int(zone[4:6])
        if oh >= 24 or om >= 60:
            return None
        offset = (oh * 3600 + om * 60) * (1 if zone[0] == "+" else -1)
    secs = _days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset
    return secs * _NS + ns


def format_time(ns: int) -> str:
    """RFC 3339 in UTC with only the significant fraction digits, as Go's
    RFC3339Nano writes it."""
    secs, frac = divmod(ns, _NS)
    days, rem = divmod(secs, 86400)
    y, m, d = _civil_from_days(days)
    h, rem = divmod(rem, 3600)
    mi, s = divmod(rem, 60)
    out = f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}"
    if frac:
        out += "." + f"{frac:09d}".rstrip("0")
    return out + "Z"


def datetime_ns(t: _dt.datetime) -> int:
    """Nanoseconds since the epoch of an aware datetime, exactly."""
    if t.tzinfo is None or t.utcoffset() is None:
        raise ValueError("a naive datetime is ambiguous; give it a time zone (datetime.timezone.utc)")
    delta = t - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return (delta.days * 86400 + delta.seconds) * _NS + delta.microseconds * 1000


def _utc_now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


# ---------------------------------------------------------------------------
# Field checks (Go's events/fieldcheck)


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def _has_surrogate(s: str) -> bool:
    return any(0xD800 <= ord(c) <= 0xDFFF for c in s)


def _is_name_char(c: str) -> bool:
    return ("a" <= c <= "z") or ("A" <= c <= "Z") or ("0" <= c <= "9") or c in "._:-"


def check_name(s: str) -> str:
    """The message for an invalid tenant or metric name, or ""."""
    if s == "":
        return "is required (1-128 characters of A-Z a-z 0-9 . _ : -)"
    n = len(_utf8(s))
    if n > MAX_NAME_LEN:
        return f"must be at most {MAX_NAME_LEN} characters, got {n}"
    if s in (".", ".."):
        return f"must not be {_gofmt.quote(s)}"
    offset = 0
    for c in s:
        if not _is_name_char(c):
            shown = "\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c
            return f"may contain only A-Z a-z 0-9 . _ : -; found {_gofmt.quote_rune(shown)} at byte {offset}"
        offset += len(_utf8(c))
    return ""


def check_text(s: str) -> str:
    """The message for text holding control characters or not UTF-8, or ""."""
    if _has_surrogate(s):
        return "must be valid UTF-8"
    for c in s:
        r = ord(c)
        if r < 0x20 or 0x7F <= r <= 0x9F:
            return f"must not contain control characters (found U+{r:04X})"
    return ""


def _go_prefix(b: bytes) -> str:
    """A byte prefix of UTF-8 text as Go's JSON writes it: a character cut
    short becomes one U+FFFD per byte."""
    for cut in range(len(b), max(len(b) - 4, -1), -1):
        try:
            head = b[:cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return head + "\ufffd" * (len(b) - cut)
    return b.decode("utf-8", "replace")


def check_property(name: str, key: str, value: str) -> tuple[str, str]:
    """The field and message of the first problem of one property, or
    ("", "")."""
    kb = _utf8(key)
    if key == "":
        return name, "keys must not be empty"
    if len(kb) > MAX_PROPERTY_KEY_LEN:
        return f"{name}.{_go_prefix(kb[:16])}...", f"key must be at most {MAX_PROPERTY_KEY_LEN} bytes"
    if (msg := check_text(key)) != "":
        return name, f"key {_gofmt.quote(key)} {msg}"
    vn = len(_utf8(value))
    if vn > MAX_PROPERTY_VALUE_LEN:
        return f"{name}.{key}", f"must be at most {MAX_PROPERTY_VALUE_LEN} bytes, got {vn}"
    if (msg := check_text(value)) != "":
        return f"{name}.{key}", msg
    return "", ""


def _check_id(s: str) -> str:
    if s == "":
        return "is required (1-128 printable ASCII characters; events.NewID makes one)"
    b = _utf8(s)
    if len(b) > MAX_ID_LEN:
        return f"must be at most {MAX_ID_LEN} characters, got {len(b)}"
    for i, c in enumerate(b):
        if c < 0x20 or c > 0x7E:
            return f"must be printable ASCII; byte {i} is 0x{c:02x}"
    return ""


def _json_kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, Mapping):
        return "an object"
    if isinstance(v, (list, tuple)):
        return "an array"
    return type(v).__name__


# ---------------------------------------------------------------------------
# Events


@dataclass
class Event:
    """One usage event: ``value`` units of ``metric`` used by ``tenant`` at
    ``time``.

    ``id`` is the idempotency key (a fresh UUIDv7 by default): keep the
    event and resend it unchanged after a failure; never make a new id for
    the same usage. ``time`` is an aware datetime or an RFC 3339 string
    (nanoseconds kept); it defaults to now.
    """

    tenant: str
    metric: str
    value: int
    id: str = field(default_factory=new_id)
    time: TimeLike = field(default_factory=_utc_now)
    source: str = ""
    properties: Optional[Mapping[str, str]] = None

    def validate(self, validator: Optional["Validator"] = None) -> None:
        """Raises ValidationError listing every field error, if any."""
        errs = (validator or Validator()).validate(self)
        if errs:
            raise ValidationError(errs)

    def time_ns(self) -> Optional[int]:
        """The event time in nanoseconds since the epoch; None when it is
        missing; ValueError when it is not a time."""
        t = self.time
        if t is None or t == "":
            return None
        if isinstance(t, _dt.datetime):
            return datetime_ns(t)
        if isinstance(t, str):
            ns = parse_time(t)
            if ns is None:
                raise ValueError(f"not an RFC 3339 timestamp: {t!r}")
            return ns
        raise ValueError(f"time must be a datetime or an RFC 3339 string, got {type(t).__name__}")

    def canonical_json(self) -> bytes:
        """The canonical JSON the Go SDK and the API publish for this event,
        byte for byte (call validate first: an invalid event has none)."""
        ns = self.time_ns()
        if ns is None:
            raise ValueError("the event has no time")
        out = [
            '{"id":',
            _wire(self.id),
            ',"tenant":',
            _wire(self.tenant),
            ',"metric":',
            _wire(self.metric),
            ',"value":',
            str(int(self.value)),
            ',"time":"',
            format_time(ns),
            '"',
        ]
        if self.source:
            out += [',"source":', _wire(self.source)]
        if self.properties:
            out.append(',"properties":{')
            for i, k in enumerate(sorted(self.properties, key=_utf8)):
                if i:
                    out.append(",")
                out += [_wire(k), ":", _wire(self.properties[k])]
            out.append("}")
        out.append("}")
        return "".join(out).encode("utf-8")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Event":
        """An event from a mapping of its JSON field names (``id``,
        ``tenant``, ``metric``, ``value``, ``time``, ``source``,
        ``properties``); missing fields are empty (and refused by
        validate, except ``source`` and ``properties``)."""
        return cls(
            id=d.get("id", ""),
            tenant=d.get("tenant", ""),
            metric=d.get("metric", ""),
            value=d.get("value"),  # type: ignore[arg-type]
            time=d.get("time"),
            source=d.get("source") or "",
            properties=d.get("properties"),
        )


_WIRE_ESCAPES = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _wire(s: str) -> str:
    """A JSON string as the canonical encoding writes it: only quote,
    backslash and control characters below U+0020 escaped."""
    out = ['"']
    for c in s:
        r = ord(c)
        if c in _WIRE_ESCAPES:
            out.append(_WIRE_ESCAPES[c])
        elif r < 0x20:
            out.append(f"\\u{r:04x}")
        elif 0xD800 <= r <= 0xDFFF:
            out.append("\\ufffd" * 3)  # Go reads each byte of it as invalid
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


@dataclass
class Validator:
    """Checks events against the contract, as Go's events.Validator.

    ``horizon_ns`` is how old an event may be, ``max_future_ns`` how far
    ahead of ``now_ns()`` (nanoseconds since the epoch; default the system
    clock)."""

    horizon_ns: int = DEFAULT_HORIZON_NS
    max_future_ns: int = DEFAULT_MAX_FUTURE_NS
    now_ns: Callable[[], int] = _time.time_ns

    def validate(self, e: Event, index: int = 0) -> list[FieldError]:
        """Every field error of e, tagged with index; [] when valid."""
        errs: list[FieldError] = []

        def add(f: str, msg: str) -> None:
            if msg:
                errs.append(FieldError(f, msg, index))

        def text_field(f: str, v: Any, check: Callable[[str], str]) -> None:
            if not isinstance(v, str):
                add(f, f"must be a string, got {_json_kind(v)}")
            else:
                add(f, check(v))

        text_field("id", e.id, _check_id)
        text_field("tenant", e.tenant, check_name)
        text_field("metric", e.metric, check_name)
        v = e.value
        if isinstance(v, bool) or not isinstance(v, int):
            if v is None:
                add("value", "is required (an integer count in the smallest unit)")
            elif isinstance(v, float):
                add("value", f"must be an integer, got {v!r}; count in the smallest unit (bytes, milliseconds, tokens)")
            else:
                add("value", f"must be an integer, got {_json_kind(v)}")
        elif v < 0:
            add("value", f"must be at least 0, got {v}")
        elif v > MAX_VALUE:
            add("value", f"must be at most 2^53 ({MAX_VALUE}), got {v}")
        self._check_time(add, e.time)
        src = e.source if e.source is not None else ""
        if not isinstance(src, str):
            add("source", f"must be a string, got {_json_kind(src)}")
        elif len(_utf8(src)) > MAX_SOURCE_LEN:
            add("source", f"must be at most {MAX_SOURCE_LEN} bytes, got {len(_utf8(src))}")
        else:
            add("source", check_text(src))
        self._check_properties(add, e.properties)
        return errs

    def _check_time(self, add: Callable[[str, str], None], t: TimeLike) -> None:
        if isinstance(t, str) and t != "":
            ns = parse_time(t)
            if ns is None:
                b = _utf8(t)
                shown = _go_prefix(b[:40]) + "..." if len(b) > 40 else t
                add(
                    "time", f"must be an RFC 3339 timestamp such as 2026-11-21T19:00:00.123Z, got {_gofmt.quote(shown)}"
                )
                return
        elif isinstance(t, _dt.datetime):
            try:
                ns = datetime_ns(t)
            except ValueError as err:
                add("time", str(err))
                return
        elif t is None or t == "":
            ns = None
        else:
            add("time", f"must be a datetime or an RFC 3339 string, got {type(t).__name__}")
            return
        if ns is None or ns == _GO_ZERO_NS:
            add("time", "is required (an RFC 3339 timestamp such as 2026-11-21T19:00:00Z)")
            return
        now = self.now_ns()
        horizon = self.horizon_ns if self.horizon_ns > 0 else DEFAULT_HORIZON_NS
        future = self.max_future_ns if self.max_future_ns > 0 else DEFAULT_MAX_FUTURE_NS
        if ns > now + future:
            add(
                "time",
                f"is {_ahead_by(ns, now)} ahead of the server clock; at most {_gofmt.duration(future)} is allowed",
            )
        elif ns < now - horizon:
            add(
                "time",
                f"is older than the {_gofmt.duration(horizon)} dedup horizon; "
                "such usage can no longer be counted exactly once",
            )

    def _check_properties(self, add: Callable[[str, str], None], props: Any) -> None:
        if props is None:
            return
        if not isinstance(props, Mapping):
            add("properties", f"must be an object of string values, got {_json_kind(props)}")
            return
        if len(props) > MAX_PROPERTIES:
            add("properties", f"must have at most {MAX_PROPERTIES} keys, got {len(props)}")
        seen: dict[str, str] = {}
        for k in sorted(props, key=lambda k: _utf8(k) if isinstance(k, str) else b""):
            v = props[k]
            if not isinstance(k, str):
                add("properties", f"keys must be strings, got {_json_kind(k)}")
                continue
            # The API refuses an object holding one key twice in any case
            # (its decoder's rule, checked here so the event is refused at
            # once): the keys are sent sorted, the later one is named.
            fk = _fold(k)
            if fk in seen:
                add(
                    f"properties.{k}",
                    f"appears twice in the same object, also as {_gofmt.quote(seen[fk])} "
                    "(keys are compared after unescaping and in any case); send each field once",
                )
                continue
            seen[fk] = k
            if not isinstance(v, str):
                add(f"properties.{k}", f"must be a string, got {_json_kind(v)}")
                continue
            f, msg = check_property("properties", k, v)
            add(f, msg)


def _fold_char(c: str) -> str:
    if c == "\u0131":  # dotless i folds to nothing else in Unicode's simple folding
        return c
    u = c.upper()
    if len(u) != 1:
        u = c
    low = u.lower()
    return low if len(low) == 1 else u


def _fold(s: str) -> str:
    """A key equal for strings equal under Unicode simple case folding (as
    Go's bytes.EqualFold compares keys)."""
    return "".join(_fold_char(c) for c in s)


_MAX_DURATION_NS = (1 << 63) - 1


def _ahead_by(t: int, now: int) -> str:
    """How far t is after now, as Go's events package says it: a duration
    rounded to seconds, or whole days from 48 hours on."""
    d = min(t - now, _MAX_DURATION_NS)  # Go's Time.Sub saturates
    if d < 48 * 3600 * _NS:
        q, r = divmod(d, _NS)
        if r + r >= _NS:
            q += 1
        return _gofmt.duration(q * _NS)
    return f"{(t // _NS - now // _NS + 43200) // 86400} days"
