"""The one seam between what HQ's API decides and the down path that carries it to the stores.

`push` records the intent durably in `down_queue`, one row per (tenant, scope, kind) with the next
version, inside the caller's transaction, so the answer of an API call and its push are committed
together or not at all. The down publisher (hq/down.py) reads `down_queue` and sends each row on
`posedge/v1/{tenant}/{store}/down/{kind}` (`scope` = the store id) or `.../all/down/{kind}` (`scope` =
`all`), and resends newer versions than a store says it holds on connect.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any, Sequence

from posedge.hq import down
from posedge.hq.db import Database
from posedge.sync.encoding import dumps

KINDS = ("members", "coupons", "revocations", "pickups", "erase", "stock")
ALL_STORES = "all"


def push(database: Database, tenant: str, store: str | None, kind: str, records: Sequence[dict[str, Any]],
         private: Sequence[str] = ()) -> int:
    """Record `records` (each carrying `version` = the returned version) for `store` (None: every store of the
    tenant, on `all/down/`) under `kind`; returns that version (microseconds of HQ's clock), strictly increasing
    per (tenant, scope, kind).
    `private`: fields HQ keeps in `down_queue` for itself (an erasure's id) but does not send to the stores.

    Call it inside `database.transaction()`: it writes `down_queue` (what the API decided, per version) and the
    same records as the next document of HQ's down log (hq/down.py), which the running `posedge-hq serve`
    publishes and resends to a store that says on connect it holds an older version."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r} is not one of {KINDS}")
    scope = store or ALL_STORES
    # Two HQ processes racing for one version: the primary key refuses the second, its transaction rolls back.
    row = database.execute("SELECT max(version) FROM down_queue WHERE tenant = ? AND scope = ? AND kind = ?",
                           (tenant, scope, kind)).one()
    # HQ's clock in microseconds (as the verdicts', docs/protocol.md 8.6), never below the last one + 1: newer
    # than the versions of an initial load (`posedge data import`, small numbers) and of any earlier push, so a
    # store takes HQ's record, and an erasure's tombstone compares with later records by time.
    version = max(int(row[0]) + 1 if row and row[0] is not None else 1, time.time_ns() // 1000)
    stamped = [{**record, "version": version} for record in records]
    database.execute("INSERT INTO down_queue VALUES (?, ?, ?, ?, ?, ?)",
                     (tenant, scope, kind, version, dumps(stamped), datetime.now(timezone.utc).isoformat()))
    sent = [{k: v for k, v in record.items() if k not in private} for record in stamped]
    if down.insert_document(database, tenant, store, kind, sent) is None:
        raise down.DocumentRefused(f"another writer took the next {kind} document version; try again")
    return version
