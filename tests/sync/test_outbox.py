"""The outbox's acknowledged position (sync/outbox.py, schema 9) on a real migrated database: an ack is one row,
pending and depth follow it, retention never deletes past it, and an older database's per-event marks
become the same position."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given, settings, strategies as st

from posedge.agent.retention.rules import Cutoffs, prune_outbox
from posedge.agent.store.schema import latest_version, migrate
from posedge.sync import outbox

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)


def database(path: Path, version: int | None = None) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, target=version)
    return conn


def count_pending(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM outbox WHERE seq > ?", (outbox.acked_through(conn),)).fetchone()[0])


def test_an_ack_is_one_row_and_never_reaches_past_the_outboxs_end(tmp_path: Path) -> None:
    conn = database(tmp_path / "s.db")
    for n in range(5):
        outbox.append_event(conn, "sale", f"s{n}", {"n": n})
    assert outbox.mark_acked_through(conn, 3) == 3
    assert outbox.mark_acked_through(conn, 2) == 0  # an older ack, late: nothing changes
    assert outbox.mark_acked_through(conn, 99) == 2  # past the end (another database's position): up to the end
    assert outbox.acked_through(conn) == 5
    outbox.append_event(conn, "sale", "later", {})  # written after that ack: still pending
    assert [e.key for e in outbox.pending(conn)] == ["later"]
    assert conn.execute("SELECT through_seq FROM outbox_acks ORDER BY through_seq").fetchall() == [(3,), (5,)]
    assert "acked_at" not in {row[1] for row in conn.execute("PRAGMA table_info(outbox)")}  # rows never rewritten


def test_depth_and_oldest_are_the_first_pending_events(tmp_path: Path) -> None:
    conn = database(tmp_path / "s.db")
    assert outbox.stats(conn) == outbox.OutboxStats(0, None)
    for n in range(4):
        outbox.append_event(conn, "sale", f"s{n}", {})
    first = conn.execute("SELECT created_at FROM outbox WHERE seq = 3").fetchone()[0]
    outbox.mark_acked_through(conn, 2)
    stats = outbox.stats(conn)
    assert (stats.depth, stats.oldest_created_at) == (2, datetime.fromisoformat(first))
    assert [e.seq for e in outbox.pending(conn, after_seq=0)] == [3, 4]
    assert [e.seq for e in outbox.pending(conn, after_seq=3)] == [4]  # the drainer's own position, further on
    assert outbox.oldest_pending(conn) == (3, first)


def test_a_schema_8_database_keeps_its_acknowledged_position(tmp_path: Path) -> None:
    conn = database(tmp_path / "old.db", version=8)
    t1, t2, t3 = "2026-11-01T10:00:00.000+00:00", "2026-11-02T10:00:00.000+00:00", "2026-11-03T10:00:00.000+00:00"
    marks = [t1, t1, t1, t2, t2, None, t3]  # the 7th acked by event id, past a pending one
    for n, acked_at in enumerate(marks, start=1):
        conn.execute("INSERT INTO outbox (event_id, kind, key, payload, created_at, acked_at)"
                     " VALUES (?, 'sale', ?, '{}', ?, ?)", (f"e{n}", f"s{n}", t1, acked_at))
    migrate(conn)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
    assert conn.execute("SELECT through_seq, acked_at FROM outbox_acks ORDER BY through_seq").fetchall() == [
        (3, t1), (5, t2)]
    assert [e.seq for e in outbox.pending(conn)] == [6, 7]  # the 7th goes again; HQ deduplicates it
    assert outbox.stats(conn).depth == 2
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'outbox_pending'").fetchall() == []


# What one part hands the next: the till appends, HQ acks any position (late, repeated, past the end),
# retention prunes at any instant. Whatever the order, the position only moves forward, never past the
# outbox's end, pending is exactly what follows it, depth is its count, and nothing pending is deleted.
OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("append"), st.integers(1, 5)),
    st.tuples(st.just("ack"), st.integers(-2, 40)),
    st.tuples(st.just("prune"), st.integers(0, 30)),  # days after NOW: the cutoff moves with it
), max_size=40)


@settings(max_examples=60, deadline=None)
@given(operations=OPERATIONS)
def test_pending_depth_and_pruning_follow_the_position_whatever_comes(tmp_path_factory, operations) -> None:
    conn = database(tmp_path_factory.mktemp("outbox") / "s.db")
    written: list[int] = []
    position = 0
    for op, arg in operations:
        if op == "append":
            for _ in range(arg):
                outbox.append_event(conn, "sale", "k", {})
                written.append(outbox.max_seq(conn))
        elif op == "ack":
            outbox.mark_acked_through(conn, arg)
        else:
            at = NOW + timedelta(days=arg)
            prune_outbox(conn, Cutoffs.at(at, sales_days=90, outbox_acked_days=1, print_jobs_days=7), 3)
        now_at = outbox.acked_through(conn)
        assert position <= now_at <= (written[-1] if written else 0)
        position = now_at
        kept = [row[0] for row in conn.execute("SELECT seq FROM outbox ORDER BY seq")]
        assert [s for s in written if s > position] == [s for s in kept if s > position]  # none pending deleted
        assert [e.seq for e in outbox.pending(conn, limit=1000)] == [s for s in written if s > position]
        assert outbox.stats(conn).depth == count_pending(conn)
        if 0 < position:
            assert position in kept  # the last acknowledged event stays: the drainer checks HQ's position on it
