"""What retention may delete, and what must stay. Each function is one small batch in the caller's
transaction (the writer's), returning how many rows of its kind it deleted.

Who reads what decides the rules (docs/operations.md, "Retention"):
- `outbox`: an event HQ has not acknowledged is never deleted. Kept besides: the newest acknowledged
  event (the drainer checks HQ's position, `acked_seq`, against the event at that seq; without it
  HQ's position would look like another database's and the stream would start over), and the
  `store_key` events (receipts report the store's key once, looking for its event).
- `sales` (with their lines, payments, till side, coupon redemptions, claims, refunds and print jobs):
  a sale is kept `sales_days` (refunds and reprints read it and its first print job), and beyond that
  while an outbox event written with it or with one of its refunds is unacknowledged, while its claim
  code can still be claimed, and while a print job of it is pending or being sent.
- `print_jobs`: a done job older than `print_jobs_days` goes unless it is the first job of a receipt
  whose sale is kept (its facts are what a reprint and `posedge receipt preview` print).
- `stock_movements` and `points_entries`: only those already inside HQ's figure (seq at or below the
  stock row's `through_seq`, the member's `points_through`) and older than `outbox_acked_days`;
  nothing reads them any more (on-hand and balances sum the entries after it). Entries HQ has not
  folded in are the truth of on-hand and balances and stay.
- `receipt_counters`: a day's counter once no sale of that day is kept (receipt numbers never repeat:
  a new sale is always numbered in today's business day).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from posedge.sync import outbox
from posedge.sync.encoding import dumps

SALE_CHILDREN = ("sale_lines", "sale_payments", "till_sales", "coupon_redemptions", "pending_claims", "refunds")


@dataclass(frozen=True)
class Cutoffs:
    """ISO 8601 UTC instants: rows older than these may go (each rule adds what must stay)."""

    now: str
    sales_before: str
    outbox_acked_before: str
    print_jobs_before: str

    @classmethod
    def at(cls, now: datetime, sales_days: int, outbox_acked_days: int, print_jobs_days: int) -> "Cutoffs":
        now = now.astimezone(timezone.utc)
        return cls(_iso(now), _iso(now - timedelta(days=sales_days)), _iso(now - timedelta(days=outbox_acked_days)),
                   _iso(now - timedelta(days=print_jobs_days)))


def _iso(moment: datetime) -> str:
    return moment.isoformat()


def prune_outbox(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    """Events up to the highest position HQ acknowledged before the cutoff (with the module's exceptions); then
    the ack positions no later cutoff needs (all but the newest before this one)."""
    acked_before = "(SELECT coalesce(max(through_seq), 0) FROM outbox_acks WHERE acked_at < ?)"
    cur = conn.execute(
        f"DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq <= {acked_before}"
        f" AND seq < {outbox.POSITION_SQL} AND kind != 'store_key'"
        " ORDER BY seq LIMIT ?)",
        (cutoffs.outbox_acked_before, limit))
    conn.execute(f"DELETE FROM outbox_acks WHERE through_seq < {acked_before}", (cutoffs.outbox_acked_before,))
    return cur.rowcount


def prunable_sales(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> list[tuple[str, str]]:
    """(sale_id, receipt_no) of the oldest sales that may go, at most `limit`."""
    oldest = outbox.oldest_pending(conn)
    oldest_unacked = oldest[1] if oldest else None
    # A sale's events are appended in its own transaction: a sale recorded before the oldest unacked
    # event has every event of its own acknowledged; a refund of it, later, is checked on its own.
    keep_from = min(cutoffs.sales_before, oldest_unacked) if oldest_unacked else cutoffs.sales_before
    rows = conn.execute(
        "SELECT s.sale_id, s.receipt_no FROM sales s WHERE s.recorded_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.sale_id = s.sale_id AND r.created_at >= ?)"
        " AND NOT EXISTS (SELECT 1 FROM pending_claims c WHERE c.sale_id = s.sale_id AND c.expires_at > ?)"
        " AND NOT EXISTS (SELECT 1 FROM print_jobs j WHERE j.receipt_no = s.receipt_no"
        "                 AND j.state IN ('pending', 'sending'))"
        " ORDER BY s.recorded_at LIMIT ?",
        (keep_from, keep_from, cutoffs.now, limit)).fetchall()
    return [(row[0], row[1]) for row in rows]


def prune_sales(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    sales = prunable_sales(conn, cutoffs, limit)
    if not sales:
        return 0
    sale_ids = dumps([sale_id for sale_id, _ in sales])
    receipt_nos = dumps([receipt_no for _, receipt_no in sales])
    for table in SALE_CHILDREN:  # children first: they reference sales(sale_id)
        conn.execute(f"DELETE FROM {table} WHERE sale_id IN (SELECT value FROM json_each(?))", (sale_ids,))
    conn.execute("DELETE FROM print_jobs WHERE receipt_no IN (SELECT value FROM json_each(?))", (receipt_nos,))
    return conn.execute("DELETE FROM sales WHERE sale_id IN (SELECT value FROM json_each(?))", (sale_ids,)).rowcount


def prune_print_jobs(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    cur = conn.execute(
        "DELETE FROM print_jobs WHERE job_id IN (SELECT j.job_id FROM print_jobs j"
        " WHERE j.state = 'done' AND j.done_at < ?"
        " AND (j.job_id > (SELECT min(f.job_id) FROM print_jobs f WHERE f.receipt_no = j.receipt_no)"
        "      OR NOT EXISTS (SELECT 1 FROM sales s WHERE s.receipt_no = j.receipt_no))"
        " ORDER BY j.job_id LIMIT ?)",
        (cutoffs.print_jobs_before, limit))
    return cur.rowcount


def prune_stock_movements(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    cur = conn.execute(
        "DELETE FROM stock_movements WHERE seq IN (SELECT m.seq FROM stock s JOIN stock_movements m"
        " ON m.sku = s.sku AND m.seq <= s.through_seq WHERE m.created_at < ? LIMIT ?)",
        (cutoffs.outbox_acked_before, limit))
    return cur.rowcount


def prune_points_entries(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    cur = conn.execute(
        "DELETE FROM points_entries WHERE seq IN (SELECT e.seq FROM members m JOIN points_entries e"
        " ON e.member_id = m.member_id AND e.seq <= m.points_through WHERE e.created_at < ? LIMIT ?)",
        (cutoffs.outbox_acked_before, limit))
    return cur.rowcount


def prune_receipt_counters(conn: sqlite3.Connection, cutoffs: Cutoffs, limit: int) -> int:
    row = conn.execute("SELECT business_day FROM sales ORDER BY recorded_at LIMIT 1").fetchone()
    oldest_kept = row[0] if row else None
    if oldest_kept is None:  # no sale kept: keep the counters of the last days (today's is in use)
        oldest_kept = (datetime.fromisoformat(cutoffs.now) - timedelta(days=2)).strftime("%Y%m%d")
    cur = conn.execute("DELETE FROM receipt_counters WHERE business_day IN (SELECT business_day FROM"
                       " receipt_counters WHERE business_day < ? ORDER BY business_day LIMIT ?)", (oldest_kept, limit))
    return cur.rowcount


Rule = Callable[[sqlite3.Connection, Cutoffs, int], int]
# In this order: sales first (they take their print jobs and children along), then what is left.
RULES: dict[str, Rule] = {
    "sales": prune_sales,
    "print_jobs": prune_print_jobs,
    "outbox": prune_outbox,
    "stock_movements": prune_stock_movements,
    "points_entries": prune_points_entries,
    "receipt_counters": prune_receipt_counters,
}
