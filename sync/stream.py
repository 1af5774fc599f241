"""The outbox's stream: the id its gap-free sequence numbers belong to (docs/protocol.md, "Streams").

A stream is born with the database. It is born again when the database is not the one the agent last
ran with: the stream id is also kept in a marker file beside the database (`<db>.stream`), and a
database whose `sync_stream` row differs from the marker (a backup copied back over it, another
store PC's file) or a marker that is missing (a database carried to a new PC, a fresh `var/` of
which only the database came back) starts a new stream. A backup of the same stream (row and
marker agree) is caught by HQ's ack instead: its position is past the outbox's highest seq
(`stream_behind`), or the event it holds at its position is not the outbox's (`seq_conflict`); both
make the agent start a new stream too (sync/drainer.py). A new stream is always safe (HQ
deduplicates on event ids); a reused one is not.

Why seq is gap-free and never reused: `outbox.seq` is `INTEGER PRIMARY KEY AUTOINCREMENT`. SQLite
gives each insert max(seq ever used)+1 from `sqlite_sequence`, and that update is part of the
inserting transaction: a transaction (or a sale's SAVEPOINT) that rolls back takes its number back
with it, so no committed seq is ever skipped. AUTOINCREMENT (unlike a bare rowid) never hands out a
number again after rows are deleted, so pruning acknowledged events can not reuse one. And seq is
assigned in commit order, because SQLite runs one write transaction at a time: a reader never sees
seq n+1 committed while n is still to come.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from posedge.sync import outbox
from posedge.sync.ids import uuid7

REASONS = ("new_database", "restored", "stream_behind", "seq_conflict")


@dataclass(frozen=True)
class Stream:
    stream_id: str
    first_seq: int
    born_at: str
    reason: str


def read_stream(conn: sqlite3.Connection) -> Stream | None:
    row = conn.execute("SELECT stream_id, first_seq, born_at, reason FROM sync_stream WHERE id = 1").fetchone()
    return Stream(row[0], row[1], row[2], row[3]) if row else None


def birth_stream(conn: sqlite3.Connection, reason: str) -> Stream:
    """A new stream, in the caller's (writer) transaction. It starts at the oldest event HQ has not acked
    (those are sent again under the new stream), or after the last event ever numbered."""
    if reason not in REASONS:
        raise ValueError(f"reason {reason!r} is not one of {REASONS}")
    oldest = outbox.oldest_pending(conn)
    first = oldest[0] if oldest else last_seq_ever(conn) + 1
    stream = Stream(str(uuid7()), int(first), datetime.now(timezone.utc).isoformat(timespec="milliseconds"), reason)
    conn.execute(
        "INSERT INTO sync_stream (id, stream_id, first_seq, born_at, reason) VALUES (1, ?, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET stream_id = excluded.stream_id, first_seq = excluded.first_seq, "
        "born_at = excluded.born_at, reason = excluded.reason",
        (stream.stream_id, stream.first_seq, stream.born_at, stream.reason),
    )
    return stream


def last_seq_ever(conn: sqlite3.Connection) -> int:
    """The highest seq the outbox ever handed out (0: none), deleted rows included."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return int(row[0]) if row else 0


def marker_path(database: Path) -> Path:
    return database.parent / (database.name + ".stream")


def read_marker(database: Path) -> str | None:
    try:
        return marker_path(database).read_text(encoding="ascii").strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def write_marker(database: Path, stream_id: str) -> None:
    """Atomically (write, fsync, rename): a torn marker would only cost one more new stream, but no need."""
    path = marker_path(database)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(stream_id + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def birth_reason(stream: Stream | None, marker: str | None) -> str | None:
    """Why the stream must be born (again) at start, or None when the database is the one last run with."""
    if stream is None:
        return "new_database"
    if marker != stream.stream_id:
        return "restored"
    return None
