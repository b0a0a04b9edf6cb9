"""Shared fixtures: the repository's conformance vectors, and anyio on
asyncio only."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
CONFORMANCE = ROOT / "testdata" / "conformance"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def load_vectors(name: str) -> list[dict[str, Any]]:
    """A conformance file of the repository (the SDK lives in sdk/python)."""
    path = CONFORMANCE / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: the tests run from the repository, which holds the shared vectors")
    data: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
    return data
