"""Schemathesis hooks for the metering API (loaded through SCHEMATHESIS_HOOKS
by scripts/schemathesis.sh).

Schemathesis has no serializer for application/x-ndjson, which POST
/v1/events accepts: the document describes its body as the array of
events, and this sends each element as one JSON line.
"""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        lines = [json.dumps(item, ensure_ascii=False) for item in value]
        return ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
