"""HQ's double-redemption verdicts to the stores: a `verdicts` records document on each store's down/verdicts.

Both stores of a double redemption get a record `{"coupon_id", "verdict": "double_redemption",
"other_store", "detail", "version"}` (the fields `posedge data import verdicts` takes, docs/till.md).
Versions are HQ's clock in microseconds, strictly increasing in this process: a later verdict on the same
coupon (a third store) replaces the earlier one at the store, a resent one changes nothing.

`send_verdicts` publishes directly; when the down path's general publisher (hq/down.py: versions kept per
store and kind, resent on `up/versions`) exists, this is the one function to route through it.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from posedge.hq.coupons import DoubleRedemption
from posedge.sync.down import Records, build_records, down_topic
from posedge.sync.ids import uuid7
from posedge.sync.protocol import Topics

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


def send_verdicts(publish: Publish, found: Iterable[DoubleRedemption]) -> int:
    """Publish one verdicts document per store concerned; returns how many documents went out."""
    documents = verdict_records(found)
    for (tenant, store), records in documents.items():
        doc = Records(str(uuid7()), tenant, store, "verdicts", next_version(), tuple(records))
        publish(down_topic(Topics(tenant, store), "verdicts"), build_records(doc))
    return len(documents)
