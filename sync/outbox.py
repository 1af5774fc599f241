"""The outbox: up-events for HQ, appended in the same transaction as the change they describe.

Each event has a UUIDv7 `event_id` that HQ deduplicates on, so resending after any failure is safe
(exactly once in effect). The drainer that publishes them over MQTT comes with the sync link; this
module owns the table's semantics: append, what is pending, HQ's acknowledged position. The drainer
(sync/drainer.py) reads `pending` in seq order and marks `mark_acked_through` on HQ's cumulative ack;
sync/stream.py says why seq is gap-free and never reused.
Table `outbox` (the agent's schema migration 0001): seq, event_id, kind, key, payload (JSON), created_at,
sent_at and attempts (not written). Table `outbox_acks` (migration 0009): through_seq, acked_at, a row an
ack; an event is acknowledged when its seq is at or below the highest through_seq. Marking a position, not
every event, keeps a drained backlog from being rewritten on the disk the till's checkouts wait on.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

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


# HQ's position: every event up to it is acknowledged (0: none yet). An uncorrelated subquery, evaluated once;
# retention (agent/retention/rules.py) reads it too.
POSITION_SQL = "(SELECT coalesce(max(through_seq), 0) FROM outbox_acks)"


def pending(conn: sqlite3.Connection, limit: int = 100, after_seq: int = 0) -> list[OutboxEvent]:
    rows = conn.execute(
        "SELECT seq, event_id, kind, key, payload, created_at, attempts FROM outbox "
        f"WHERE seq > max(?, {POSITION_SQL}) ORDER BY seq LIMIT ?",
        (after_seq, limit),
    ).fetchall()
    # Not decoded: the drainer splices the stored JSON into the batch (no per-event decode and re-encode).
    return [OutboxEvent(*r) for r in rows]


def acked_through(conn: sqlite3.Connection) -> int:
    """HQ's cumulative position as this database holds it: every event up to this seq is done (0: none)."""
    return int(conn.execute(f"SELECT {POSITION_SQL}").fetchone()[0])


def mark_acked_through(conn: sqlite3.Connection, seq: int) -> int:
    """HQ's cumulative ack: every event up to `seq` is done. One small row, however many events it covers (an
    ack never rewrites the events themselves); never past the outbox's end, so that an ack from elsewhere can
    not swallow events written later. Returns how many events were newly acknowledged."""
    before = acked_through(conn)
    through = min(seq, max_seq(conn))
    if through <= before:
        return 0
    conn.execute("INSERT INTO outbox_acks (through_seq, acked_at) VALUES (?, ?)", (through, _now()))
    return through - before


def max_seq(conn: sqlite3.Connection) -> int:
    """The highest seq in the outbox (0: empty)."""
    return int(conn.execute("SELECT coalesce(max(seq), 0) FROM outbox").fetchone()[0])


def oldest_pending(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """(seq, created_at) of the first event HQ has not acknowledged, or None."""
    row = conn.execute(f"SELECT seq, created_at FROM outbox WHERE seq > {POSITION_SQL} ORDER BY seq LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else None


def stats(conn: sqlite3.Connection) -> OutboxStats:
    """Depth by the seqs, not by counting rows (a count walks every pending row's page, 40 MB for a week's
    backlog): the pending events are exactly the seqs after HQ's position, since seqs are gap-free
    (sync/stream.py) and only acknowledged events are ever deleted (agent/retention)."""
    oldest = oldest_pending(conn)
    if oldest is None:
        return OutboxStats(0, None)
    return OutboxStats(max_seq(conn) - oldest[0] + 1, datetime.fromisoformat(oldest[1]))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
