"""Go's text formats that the event contract's messages use.

The metering API's error messages are written by Go (``fmt``'s ``%q`` and
``time.Duration``'s ``String``); the SDK refuses events with the same
messages, so it formats the same way.
"""

from __future__ import annotations

import unicodedata

_SHORT_ESCAPES = {
    0x07: "\\a",
    0x08: "\\b",
    0x0C: "\\f",
    0x0A: "\\n",
    0x0D: "\\r",
    0x09: "\\t",
    0x0B: "\\v",
}


def _is_print(r: int) -> bool:
    """Go's unicode.IsPrint: letters, marks, numbers, punctuation,
    symbols and the ASCII space."""
    if r == 0x20:
        return True
    if 0xD800 <= r <= 0xDFFF:
        return False
    return unicodedata.category(chr(r))[0] in "LMNPS"


def _escape_rune(r: int, quote: str) -> str:
    if chr(r) == quote or r == 0x5C:
        return "\\" + chr(r)
    if _is_print(r):
        return chr(r)
    if r in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[r]
    if r < 0x20 or r == 0x7F:
        return f"\\x{r:02x}"
    if 0xD800 <= r <= 0xDFFF or r > 0x10FFFF:
        r = 0xFFFD
        if _is_print(r):
            return chr(r)
    if r < 0x10000:
        return f"\\u{r:04x}"
    return f"\\U{r:08x}"


def quote_rune(ch: str) -> str:
    """Go's ``%q`` of a rune: ``'a'``, ``'\\x00'``, ``'\\u0085'``."""
    return "'" + _escape_rune(ord(ch), "'") + "'"


def quote(s: str) -> str:
    """Go's ``%q`` of a string (strconv.Quote)."""
    out = ['"']
    for ch in s:
        r = ord(ch)
        if 0xD800 <= r <= 0xDFFF:
            # Not UTF-8: Go sees three invalid bytes of the surrogate's
            # encoding, each written as \x...
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "surrogatepass"))
            continue
        out.append(_escape_rune(r, '"'))
    out.append('"')
    return "".join(out)


def _frac(v: int, prec: int) -> str:
    """The digits of v / 10**prec, without trailing zeros (and without
    the point when the fraction is zero)."""
    if prec == 0:
        return str(v)
    ip, fp = divmod(v, 10**prec)
    fs = f"{fp:0{prec}d}".rstrip("0")
    return f"{ip}.{fs}" if fs else str(ip)


def duration(ns: int) -> str:
    """Go's time.Duration.String of a duration in nanoseconds: ``5m0s``,
    ``840h0m0s``, ``1.5s``, ``300ms``."""
    if ns == 0:
        return "0s"
    neg = ns < 0
    u = -ns if neg else ns
    if u < 1_000_000_000:
        if u < 1_000:
            s = _frac(u, 0) + "ns"
        elif u < 1_000_000:
            s = _frac(u, 3) + "µs"
        else:
            s = _frac(u, 6) + "ms"
    else:
        secs, fr = divmod(u, 1_000_000_000)
        fs = f"{fr:09d}".rstrip("0")
        s = f"{secs % 60}" + (f".{fs}" if fs else "") + "s"
        mins = secs // 60
        if mins:
            s = f"{mins % 60}m" + s
            hours = mins // 60
            if hours:
                s = f"{hours}h" + s
    return "-" + s if neg else s
