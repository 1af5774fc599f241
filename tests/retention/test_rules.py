"""The retention rules on a real (migrated) database: what goes, and what must stay."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from posedge.agent.retention.rules import RULES, Cutoffs, prune_outbox, prune_print_jobs, prune_sales
from posedge.agent.store.schema import migrate
from posedge.sync import outbox

NOW = datetime(2026, 12, 1, 12, tzinfo=timezone.utc)
OLD = (NOW - timedelta(days=200)).isoformat()
RECENT = (NOW - timedelta(hours=1)).isoformat()
CUTOFFS = Cutoffs.at(NOW, sales_days=90, outbox_acked_days=7, print_jobs_days=7)


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "posedge.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    migrate(conn)
    return conn


def add_sale(conn: sqlite3.Connection, sale_id: str, at: str = OLD, acked: bool = True) -> None:
    conn.execute("INSERT INTO sales VALUES (?, ?, 'h', '20260501', ?, ?, NULL, NULL, NULL, 300, 0, 300, 300, '{}')",
                 (sale_id, f"R-{sale_id}", at, at))
    conn.execute("INSERT INTO sale_lines VALUES (?, 1, 'sku', NULL, 1, 'pcs', 300, 0, 300)", (sale_id,))
    conn.execute("INSERT INTO sale_payments VALUES (?, 1, 'cash', 300, NULL)", (sale_id,))
    add_event(conn, "sale", sale_id, at, acked=at if acked else None)


def add_event(conn: sqlite3.Connection, kind: str, key: str, at: str, acked: str | None) -> None:
    """An event, and when `acked`, HQ's cumulative ack through it at that instant (HQ acks in seq order)."""
    seq = conn.execute("INSERT INTO outbox (event_id, kind, key, payload, created_at) VALUES (?,?,?,'{}',?)",
                       (f"{kind}-{key}-{at}", kind, key, at)).lastrowid
    if acked is not None:
        assert outbox.acked_through(conn) == seq - 1, "an ack is cumulative: every event before it is acked"
        conn.execute("INSERT INTO outbox_acks (through_seq, acked_at) VALUES (?, ?)", (seq, acked))


def add_job(conn: sqlite3.Connection, sale_id: str, state: str = "done", kind: str = "receipt",
            at: str = OLD) -> None:
    conn.execute("INSERT INTO print_jobs (kind, receipt_no, sale_id, printer, facts, state, created_at, done_at)"
                 " VALUES (?, ?, ?, 'p', '{}', ?, ?, ?)", (kind, f"R-{sale_id}", sale_id, state, at,
                                                           at if state == "done" else None))


def sale_ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT sale_id FROM sales")}


def prune_all(conn: sqlite3.Connection) -> None:
    for rule in RULES.values():
        while rule(conn, CUTOFFS, 1000):
            pass


def test_an_old_sale_goes_with_everything_it_wrote_and_a_recent_one_stays(conn: sqlite3.Connection) -> None:
    add_sale(conn, "old")
    add_job(conn, "old")
    add_sale(conn, "recent", RECENT)
    add_job(conn, "recent", at=RECENT)
    add_event(conn, "ping", "last", RECENT, acked=RECENT)
    prune_all(conn)
    assert sale_ids(conn) == {"recent"}
    for table in ("sale_lines", "sale_payments", "print_jobs"):
        assert {r[0] for r in conn.execute(f"SELECT sale_id FROM {table}")} == {"recent"}
    assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


def test_an_unacknowledged_event_is_never_pruned_and_keeps_the_sales_after_it(conn: sqlite3.Connection) -> None:
    add_event(conn, "ping", "acked", OLD, acked=OLD)
    add_event(conn, "points", "m1", OLD, acked=None)  # HQ never acknowledged it
    add_sale(conn, "after-it", (NOW - timedelta(days=150)).isoformat(), acked=False)
    for _ in range(3):
        prune_outbox(conn, CUTOFFS, 100)
        prune_sales(conn, CUTOFFS, 100)
    assert [r[0] for r in conn.execute("SELECT kind FROM outbox ORDER BY seq")] == ["ping", "points", "sale"]
    assert outbox.stats(conn).depth == 2
    assert sale_ids(conn) == {"after-it"}


def test_a_refund_whose_event_hq_has_not_acknowledged_keeps_its_sale(conn: sqlite3.Connection) -> None:
    add_sale(conn, "refunded")
    conn.execute("INSERT INTO refunds VALUES ('rf1', 'refunded', 'h', 100, '[]', '{}', ?)", (RECENT,))
    add_event(conn, "refund", "rf1", RECENT, acked=None)
    prune_all(conn)
    assert sale_ids(conn) == {"refunded"}


def test_the_newest_acknowledged_event_and_store_keys_stay(conn: sqlite3.Connection) -> None:
    add_event(conn, "store_key", "kid-1", OLD, acked=OLD)
    for n in range(5):
        add_event(conn, "sale", f"s{n}", OLD, acked=OLD)
    prune_all(conn)
    kept = conn.execute("SELECT kind, key FROM outbox ORDER BY seq").fetchall()
    # The drainer checks HQ's position against the event at its seq; receipts look for their key's event.
    assert kept == [("store_key", "kid-1"), ("sale", "s4")]


def test_a_claimable_sale_and_one_still_printing_stay(conn: sqlite3.Connection) -> None:
    add_sale(conn, "claimable")
    conn.execute("INSERT INTO pending_claims VALUES ('claimable', 10, 0, 300, ?, NULL, ?)",
                 ((NOW + timedelta(days=1)).isoformat(), OLD))
    add_sale(conn, "printing")
    add_job(conn, "printing", state="pending")
    add_event(conn, "ping", "last", RECENT, acked=RECENT)
    prune_all(conn)
    assert sale_ids(conn) == {"claimable", "printing"}


def test_done_reprints_go_but_a_kept_sales_receipt_job_stays(conn: sqlite3.Connection) -> None:
    add_sale(conn, "kept", RECENT)
    add_job(conn, "kept")  # the receipt job: its facts are what a reprint prints
    add_job(conn, "kept", kind="reprint")
    add_job(conn, "kept", kind="reprint", state="failed")
    prune_print_jobs(conn, CUTOFFS, 100)
    assert [r[0] for r in conn.execute("SELECT kind || ':' || state FROM print_jobs ORDER BY job_id")] == [
        "receipt:done", "reprint:failed"]


def test_stock_movements_go_only_once_hq_folded_them_in(conn: sqlite3.Connection) -> None:
    for n in range(4):
        conn.execute("INSERT INTO stock_movements (movement_id, sku, delta, reason, created_at)"
                     " VALUES (?, 'sku', -1, 'sale', ?)", (f"m{n}", OLD))
    conn.execute("INSERT INTO stock VALUES ('sku', 3, 100, 2, ?)", (OLD,))  # HQ's qty holds seq 1 and 2
    prune_all(conn)
    assert [r[0] for r in conn.execute("SELECT seq FROM stock_movements ORDER BY seq")] == [3, 4]
