"""The narrow hook other parts of HQ (the HTTP API) call to push records to stores.

`push(database, tenant, store_or_None, kind, records) -> version` writes the next version of the
document to HQ's down log (hq/down.py) and returns at once; it needs only the database. The running
`posedge-hq serve` on the same database publishes it within a poll interval (about half a second), and a
store that misses it gets it again when it tells HQ its versions on connect. Raises
`hq.down.DocumentRefused` (a ValueError) for an unknown kind, bad ids, more than 10,000 records or more
than 1 MiB on the wire. The records are not checked against their kind's fields here: the store does
that and counts what it refuses in its down_ack (`counts.invalid`).
"""

from __future__ import annotations

from typing import Any, Sequence

from posedge.hq import db
from posedge.hq.down import DocumentRefused, write_document

__all__ = ["DocumentRefused", "push"]


def push(database: db.Database, tenant: str, store_or_None: str | None, kind: str,
         records: Sequence[dict[str, Any]]) -> int:
    return write_document(database, tenant, store_or_None, kind, records)
