"""Pickup orders ("buy online, pick up in store"): shown from HQ's push, collected once."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from typing import Any

from posedge.agent.errors import AgentError, NotFound
from posedge.agent.till.stock import move_stock
from posedge.sync.outbox import append_event


class PickupCollected(AgentError):
    code = "already_collected"
    status = 409
    message = "this order has already been collected"


class PickupNotReady(AgentError):
    code = "pickup_not_ready"
    status = 409
    message = "this order cannot be collected"


def read_pickup(conn: sqlite3.Connection, order_id: str) -> dict[str, Any] | None:
    row = conn.execute("SELECT order_id, version, state, items, phone_masked, member_id FROM pickups"
                       " WHERE order_id = ? AND deleted = 0", (order_id,)).fetchone()
    if row is None:
        return None
    done = conn.execute("SELECT collected_at, till, cashier FROM pickup_collections WHERE order_id = ?",
                        (order_id,)).fetchone()
    return {"order_id": row[0], "version": row[1], "state": "collected" if done else row[2],
            "items": json.loads(row[3]), "phone_masked": row[4], "member_id": row[5],
            "collected": {"collected_at": done[0], "till": done[1], "cashier": done[2]} if done else None}


def collect_pickup(conn: sqlite3.Connection, order_id: str, till: str | None, cashier: str | None) -> dict[str, Any]:
    order = read_pickup(conn, order_id)
    if order is None:
        raise NotFound(f"no pickup order {order_id!r} for this store", order_id=order_id)
    if order["collected"] is not None:
        raise PickupCollected(order_id=order_id, collected_at=order["collected"]["collected_at"])
    if order["state"] != "ready":
        raise PickupNotReady(f"the order is {order['state']!r}, not ready", order_id=order_id, state=order["state"])
    now = datetime.now(timezone.utc)
    conn.execute("INSERT INTO pickup_collections (order_id, collected_at, till, cashier) VALUES (?,?,?,?)",
                 (order_id, now.isoformat(), till, cashier))
    movements = move_stock(conn, [(i["sku"], -i["qty"]) for i in order["items"]], "pickup", None, None, now)
    append_event(conn, "pickup_collected", order_id, {"order_id": order_id, "collected_at": now.isoformat(),
                                                      "till": till, "cashier": cashier, "stock_movements": movements})
    return {"order_id": order_id, "state": "collected", "collected_at": now.isoformat(), "items": order["items"]}
