"""HQ's double-redemption verdicts to the stores: a `verdicts` records document on each store's down/verdicts.

Both stores of a double redemption get a record `{"coupon_id", "verdict": "double_redemption",
"other_store", "detail", "version"}` (the fields `posedge data import verdicts` takes, docs/till.md).
Versions are HQ's clock in microseconds, strictly increasing in this process: a later verdict on the same
coupon (a third store) replaces the earlier one at the store, a resent one changes nothing.

`send_verdicts` goes through the down log (hq/down.py): each document gets the next version of the store's
`verdicts`, is published at once and resent on `up/versions` to a store that missed it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from posedge.hq import db, down
from posedge.hq.coupons import DoubleRedemption

Publish = Callable[[str, bytes], None]

_last_version = 0
_version_lock = threading.Lock()


def next_version() -> int:
    global _last_version
    with _version_lock:
        _last_version = max(_last_version + 1, time.time_ns() // 1000)
        return _last_version


def verdict_records(found: Iterable[DoubleRedemption]) -> dict[tuple[str, str], list[dict[str, object]]]:
    """(tenant, store) -> its verdict records: each double redemption concerns both of its stores."""
    out: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for double in found:
        version = next_version()
        for store, other in ((double.store, double.other_store), (double.other_store, double.store)):
            detail = f"coupon {double.coupon_id} was also redeemed at store {other}"
            out[(double.tenant, store)].append({"coupon_id": double.coupon_id, "verdict": "double_redemption",
                                                "other_store": other, "detail": detail, "version": version})
    return out


def send_verdicts(database: db.Database, publish: Publish, found: Iterable[DoubleRedemption]) -> int:
    """Push one verdicts document per store concerned through the down log; returns how many went out."""
    documents = verdict_records(found)
    for (tenant, store), records in documents.items():
        down.push(database, publish, tenant, store, "verdicts", records)
    return len(documents)
