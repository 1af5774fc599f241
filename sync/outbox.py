"""The outbox: up-events for HQ, appended in the same transaction as the change they describe.

Each event has a UUIDv7 `event_id` that HQ deduplicates on, so resending after any failure is safe
(exactly once in effect). The drainer that publishes them over MQTT comes with the sync link; this
module owns the table's semantics: append, what is pending, marking sent and acked. The drainer
(sync/drainer.py) reads `pending` in seq order and marks `mark_acked_through` on HQ's cumulative ack;
sync/stream.py says why seq is gap-free and never reused.
Table `outbox` (created by the agent's schema migration 0001):
seq, event_id, kind, key, payload (JSON), created_at, sent_at, acked_at, attempts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

from posedge.sync.encoding import dumps, loads
from posedge.sync.ids import uuid7


@dataclass(frozen=True)
class OutboxEvent:
    """A pending event as stored: `payload_json` is the JSON text `append_event` wrote, which the drainer sends
    as it is (sync/drainer.py); `payload` decodes it for whoever needs the value."""

    seq: int
    event_id: str
    kind: str
    key: str
    payload_json: str
    created_at: str
    attempts: int

    @property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = loads(self.payload_json)
        return value


@dataclass(frozen=True)
class OutboxStats:
    depth: int
    oldest_created_at: datetime | None

    def oldest_age_s(self, now: datetime | None = None) -> float | None:
        if self.oldest_created_at is None:
            return None
        now = now or datetime.now(timezone.utc)
        return max(0.0, (now - self.oldest_created_at).total_seconds())


def append_event(conn: sqlite3.Connection, kind: str, key: str, payload: dict[str, Any], *,
                 event_id: str | None = None) -> str:
    """Append in the caller's transaction; returns the event id."""
    event_id = event_id or str(uuid7())
    conn.execute(
        "INSERT INTO outbox (event_id, kind, key, payload, created_at) VALUES (?, ?, ?, ?, ?)",
        (event_id, kind, key, dumps(payload), _now()),
    )
    return event_id


def pending(conn: sqlite3.Connection, limit: int = 100, after_seq: int = 0) -> list[OutboxEvent]:
    rows = conn.execute(
        "SELECT seq, event_id, kind, key, payload, created_at, attempts FROM outbox "
        "WHERE acked_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    # Not decoded: the drainer splices the stored JSON into the batch (no per-event decode and re-encode).
    return [OutboxEvent(*r) for r in rows]


def mark_sent(conn: sqlite3.Connection, event_ids: Iterable[str]) -> None:
    now = _now()
    conn.executemany(
        "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE event_id = ? AND acked_at IS NULL",
        [(now, e) for e in event_ids],
    )


def mark_acked(conn: sqlite3.Connection, event_ids: Iterable[str]) -> int:
    now = _now()
    cur = conn.executemany(
        "UPDATE outbox SET acked_at = ? WHERE event_id = ? AND acked_at IS NULL", [(now, e) for e in event_ids]
    )
    return cur.rowcount


def mark_acked_through(conn: sqlite3.Connection, seq: int) -> int:
    """HQ's cumulative ack: every event up to `seq` is done. Returns how many were newly marked."""
    cur = conn.execute("UPDATE outbox SET acked_at = ? WHERE seq <= ? AND acked_at IS NULL", (_now(), seq))
    return cur.rowcount


def max_seq(conn: sqlite3.Connection) -> int:
    """The highest seq in the outbox (0: empty)."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])


def stats(conn: sqlite3.Connection) -> OutboxStats:
    depth, oldest = conn.execute("SELECT count(*), min(created_at) FROM outbox WHERE acked_at IS NULL").fetchone()
    return OutboxStats(depth, datetime.fromisoformat(oldest) if oldest else None)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
