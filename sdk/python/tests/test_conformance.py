"""The SDK against the shared vectors of testdata/conformance: the same
refusals with the same messages, and byte-identical canonical JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import load_vectors
from usagemeter import Event, ValidationError, Validator
from usagemeter._event import parse_time

NOW = parse_time("2026-11-21T19:00:00Z")
assert NOW is not None
VALIDATOR = Validator(now_ns=lambda: NOW)

EVENT_VECTORS = load_vectors("events.json")


@pytest.mark.parametrize("vector", EVENT_VECTORS, ids=[v["name"] for v in EVENT_VECTORS])
def test_events_vector(vector: dict[str, Any]) -> None:
    e = Event.from_dict(vector["event"])
    errs = VALIDATOR.validate(e)
    want = vector["want"]
    if "canonical" in want:
        assert errs == []
        assert e.canonical_json() == want["canonical"].encode("utf-8")
    else:
        assert sorted((x.field, x.message) for x in errs) == sorted((x["field"], x["message"]) for x in want["errors"])
        with pytest.raises(ValidationError):
            e.validate(VALIDATOR)


def test_events_vectors_cover_every_message() -> None:
    # Each distinct message shape of the contract appears in the vectors.
    messages = {
        x["message"].split(" ")[0] + " " + x["field"].split(".")[0]
        for v in EVENT_VECTORS
        for x in v["want"].get("errors", [])
    }
    for want in [
        "is id",
        "must id",
        "is tenant",
        "must tenant",
        "may metric",
        "must value",
        "is time",
        "must source",
        "must properties",
        "keys properties",
        "key properties",
    ]:
        assert want in messages, want


_FIELDS = {"id", "tenant", "metric", "value", "time", "source", "properties"}


def _no_exact_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise ValueError("duplicate key")
    return d


def _single_object_vectors() -> list[dict[str, Any]]:
    """decode.json's application/json vectors whose body is one event
    object with known fields, each sent once: the ones an SDK that builds
    events from such a mapping must judge as the API does."""
    out = []
    for v in load_vectors("decode.json"):
        if v["content_type"] != "application/json" or not v["body"].startswith("{") or "body_error" in v["want"]:
            continue
        try:
            d = json.loads(v["body"], object_pairs_hook=_no_exact_duplicates)
        except ValueError:
            continue  # not JSON, or a key sent twice as it is: no mapping holds that
        if not isinstance(d, dict) or not set(d) <= _FIELDS:
            continue  # unknown fields: the SDK's Event has none
        out.append(v)
    return out


DECODE_VECTORS = _single_object_vectors()


def test_decode_vectors_found() -> None:
    assert len(DECODE_VECTORS) >= 10


@pytest.mark.parametrize("vector", DECODE_VECTORS, ids=[v["name"] for v in DECODE_VECTORS])
def test_decode_vector(vector: dict[str, Any]) -> None:
    d = json.loads(vector["body"])
    e = Event.from_dict(d)
    errs = VALIDATOR.validate(e)
    if "events" in vector["want"]:
        assert errs == []
        assert e.canonical_json() == vector["want"]["events"][0].encode("utf-8")
    else:
        assert sorted({x.field for x in errs}) == sorted({x["field"] for x in vector["want"]["errors"]})
