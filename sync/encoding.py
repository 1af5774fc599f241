"""Compact JSON for what the agent stores and sends: outbox payloads, stored answers, print jobs.

orjson, because serialising is a large part of a sale's time inside the writer (docs/architecture.md,
"The sale path"). The output is the same text as `json.dumps(value, ensure_ascii=False,
separators=(",", ":"))` for the values we store (str, int, bool, None, lists, dicts with str keys),
and it also takes dataclasses and timezone-aware datetimes (RFC 3339, as `datetime.isoformat()`).
Integers beyond 64 bits are refused (money is bounded far below that at validation).

Hashes that must stay stable across versions (a sale's body hash) keep their own canonical form.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = 0


def dumps(value: Any) -> str:
    return orjson.dumps(value, option=_OPTIONS).decode("utf-8")


def dumps_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=_OPTIONS)


loads = orjson.loads
