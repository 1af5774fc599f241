"""HQ's database (SQLite; PostgreSQL comes later): one transaction per up batch, then the ack.

Tables:
- `streams`: per (tenant, store, stream) the highest seq held without a gap (`acked_seq`);
- `events`: every event received, unique on (tenant, store, stream, seq) and (tenant, store, stream,
  event_id), raw payload kept;
- `applied_events`: unique on (tenant, store, event_id): an event is applied once even when a new
  stream (a restored database) carries it again;
- `sales`: one row per sale, unique on (tenant, store_id, sale_id), with the sale's totals.
The ack goes out only after the batch's COMMIT returned (synchronous = FULL): what HQ acked is on disk.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from posedge.sync.encoding import dumps
from posedge.sync.protocol import Batch, WireEvent

SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, stream TEXT NOT NULL,
    first_seq INTEGER NOT NULL, acked_seq INTEGER NOT NULL,
    first_seen_at TEXT NOT NULL, last_seen_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, stream)
) STRICT;
CREATE TABLE IF NOT EXISTS events (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
    event_id TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL, created_at TEXT NOT NULL,
    payload TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, stream, seq),
    UNIQUE (tenant, store_id, stream, event_id)
) STRICT;
CREATE TABLE IF NOT EXISTS applied_events (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, event_id TEXT NOT NULL,
    PRIMARY KEY (tenant, store_id, event_id)
) STRICT;
CREATE TABLE IF NOT EXISTS sales (
    tenant TEXT NOT NULL, store_id TEXT NOT NULL, sale_id TEXT NOT NULL,
    receipt_no TEXT, business_day TEXT,
    gross_fen INTEGER NOT NULL, discount_fen INTEGER NOT NULL, total_fen INTEGER NOT NULL, paid_fen INTEGER NOT NULL,
    stream TEXT NOT NULL, seq INTEGER NOT NULL, received_at TEXT NOT NULL,
    UNIQUE (tenant, store_id, sale_id)
) STRICT;
"""

SALE_TOTALS = ("gross_fen", "discount_fen", "total_fen", "paid_fen")


@dataclass(frozen=True)
class Outcome:
    acked_seq: int
    gap_from: int | None = None
    error: str | None = None
    applied: int = 0
    duplicates: int = 0
    bad_payloads: int = 0
    acked_event_id: str | None = None  # the event held at acked_seq, for the agent to check (docs/protocol.md)


def open_database(url: str) -> sqlite3.Connection:
    """sqlite:///path (the only scheme so far: PostgreSQL support is to come)."""
    parts = urlsplit(url)
    if parts.scheme != "sqlite" or not parts.path:
        raise ValueError(f"--db {url!r}: expected sqlite:///path/to/hq.db (postgresql:// is not supported yet)")
    path = Path(parts.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.executescript(SCHEMA)
    return conn


def held_event_id(conn: sqlite3.Connection, tenant: str, store: str, stream: str, seq: int) -> str | None:
    return _held_event_id(conn, tenant, store, stream, seq)


def position(conn: sqlite3.Connection, tenant: str, store: str, stream: str) -> int | None:
    row = conn.execute("SELECT acked_seq FROM streams WHERE tenant = ? AND store_id = ? AND stream = ?",
                       (tenant, store, stream)).fetchone()
    return int(row[0]) if row else None


def apply_batch(conn: sqlite3.Connection, batch: Batch) -> Outcome:
    """Apply the events that continue the stream without a gap, once each; one transaction."""
    now = _now()
    conn.execute("BEGIN IMMEDIATE")
    try:
        outcome = _apply(conn, batch, now)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return outcome


def _apply(conn: sqlite3.Connection, batch: Batch, now: str) -> Outcome:
    held = position(conn, batch.tenant, batch.store, batch.stream)
    if held is None:  # a new stream starts at its own first_seq, never at another stream's position
        held = batch.first_seq - 1
        conn.execute("INSERT INTO streams VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (batch.tenant, batch.store, batch.stream, batch.first_seq, held, now, now))
    acked, applied, duplicates, bad = held, 0, 0, 0
    gap_from: int | None = None
    error: str | None = None
    for event in batch.events:
        if event.seq <= acked:
            if _held_event_id(conn, batch.tenant, batch.store, batch.stream, event.seq) not in (event.event_id, None):
                error = "seq_conflict"  # the same stream numbered another event so: a restored database
                break
            duplicates += 1
            continue
        if event.seq > acked + 1:
            gap_from = acked + 1
            break
        try:
            _insert_event(conn, batch, event, now)
        except sqlite3.IntegrityError:
            error = "seq_conflict"  # the event id is held at another seq of this stream
            break
        fresh, valid = _apply_event(conn, batch, event, now)
        applied += fresh
        duplicates += not fresh
        bad += not valid
        acked = event.seq
    conn.execute("UPDATE streams SET acked_seq = ?, last_seen_at = ? WHERE tenant = ? AND store_id = ? AND stream = ?",
                 (acked, now, batch.tenant, batch.store, batch.stream))
    return Outcome(acked, gap_from, error, applied, duplicates, bad, _held_event_id(conn, batch.tenant, batch.store,
                                                                                   batch.stream, acked))


def _held_event_id(conn: sqlite3.Connection, tenant: str, store: str, stream: str, seq: int) -> str | None:
    row = conn.execute("SELECT event_id FROM events WHERE tenant = ? AND store_id = ? AND stream = ? AND seq = ?",
                       (tenant, store, stream, seq)).fetchone()
    return str(row[0]) if row else None


def _insert_event(conn: sqlite3.Connection, batch: Batch, event: WireEvent, now: str) -> None:
    conn.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (batch.tenant, batch.store, batch.stream, event.seq, event.event_id, event.kind, event.key,
                  event.created_at, dumps(event.payload), now))


def _apply_event(conn: sqlite3.Connection, batch: Batch, event: WireEvent, now: str) -> tuple[bool, bool]:
    """(first time this event id is applied, its payload was valid for its kind)."""
    cur = conn.execute("INSERT OR IGNORE INTO applied_events VALUES (?, ?, ?)",
                       (batch.tenant, batch.store, event.event_id))
    if cur.rowcount == 0:
        return False, True
    if event.kind != "sale":
        return True, True  # kept in `events`; other kinds get their tables with the issues that need them
    row = _sale_row(event.payload)
    if row is None:
        return True, False
    conn.execute("INSERT OR IGNORE INTO sales VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 (batch.tenant, batch.store, *row, batch.stream, event.seq, now))
    return True, True


def _sale_row(payload: dict[str, Any]) -> tuple[Any, ...] | None:
    sale_id = payload.get("sale_id")
    totals = [payload.get(k) for k in SALE_TOTALS]
    if not isinstance(sale_id, str) or not all(isinstance(t, int) and not isinstance(t, bool) for t in totals):
        return None
    text = [v if isinstance(v, str) else None for v in (payload.get("receipt_no"), payload.get("business_day"))]
    return (sale_id, *text, *totals)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
