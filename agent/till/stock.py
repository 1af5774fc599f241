"""Stock: HQ's snapshot of a SKU at a version plus this store's movements not yet in it.

Sales never wait on stock: on-hand may go negative, and is flagged (docs/till.md).
"""

from __future__ import annotations

import sqlite3
from datetime import datetime
from typing import Any

from posedge.sync.ids import uuid7


def move_stock(conn: sqlite3.Connection, moves: list[tuple[str, int]], reason: str, sale_id: str | None,
               refund_id: str | None, now: datetime) -> list[dict[str, Any]]:
    """Record stock movements; the caller puts the returned list in its own outbox event."""
    out = []
    for sku, delta in moves:
        movement_id = str(uuid7())
        seq = conn.execute("INSERT INTO stock_movements"
                           " (movement_id, sku, delta, reason, sale_id, refund_id, created_at)"
                           " VALUES (?,?,?,?,?,?,?) RETURNING seq",
                           (movement_id, sku, delta, reason, sale_id, refund_id, now.isoformat())).fetchone()[0]
        out.append({"movement_id": movement_id, "seq": seq, "sku": sku, "delta": delta})
    return out


def read_inventory(conn: sqlite3.Connection, sku: str) -> dict[str, Any]:
    row = conn.execute("SELECT qty, version, through_seq FROM stock WHERE sku = ?", (sku,)).fetchone()
    qty, version, through = row if row else (0, 0, 0)
    pending = conn.execute("SELECT coalesce(sum(delta), 0), count(*) FROM stock_movements WHERE sku = ? AND seq > ?",
                           (sku, through)).fetchone()
    on_hand = qty + pending[0]
    return {"sku": sku, "on_hand": on_hand, "hq_qty": qty, "version": version, "local_delta": pending[0],
            "local_movements": pending[1], "known": row is not None, "negative": on_hand < 0}
