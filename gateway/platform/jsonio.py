"""JSON in and out of the API: orjson, with the standard library for what orjson refuses."""

from __future__ import annotations

import json
from typing import Any

import orjson


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON."""
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson refuses integers beyond 64 bits; the standard library does not
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def loads(raw: bytes | str) -> Any:
    """Parse strict JSON (no NaN, no BOM, no lone surrogates); ValueError if it is not."""
    return orjson.loads(raw)
