"""Retention keeps the database bounded: a year (and another) of sales at speed, and the file levels off.

GIVEN a real agent (in-process: its store, till, receipts and retention, a printer writing to /dev/null)
WHEN  every simulated business day the tills post their sales through the real sale path, HQ acknowledges
      the outbox and folds the stock movements in (as the sync link does), and the retention pass runs
THEN  the database's size after the second half of the run is about its size after the first half.

Time is simulated by backdating: once a day's sales are in, their rows' timestamps (all of them, in
every table, as they were written by the agent) are moved to that day, and the retention pass is run
with that day's end as its clock. What is deleted and when is therefore decided by the real rules
on the real rows. The short variant runs 2 x 24 days of 40 sales with a 7-day window; POSEDGE_SLOW=1
runs 2 x 365 days of 200 sales with the defaults (90 days; claims 30 days).
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from posedge.agent.config import Config, validate_config
from posedge.agent.domain.sales import SaleIn
from posedge.agent.service import Agent
from posedge.agent.store.writer import WAL_SIZE_LIMIT
from posedge.sync import outbox
from tests.conftest import SLOW, sale_body

# (table, timestamp columns) of every row a sale, its claim, its receipt and HQ's ack write.
TIMESTAMPS = {
    "sales": ("recorded_at", "occurred_at"),
    "outbox": ("created_at", "sent_at"),
    "outbox_acks": ("acked_at",),
    "print_jobs": ("created_at", "done_at"),
    "pending_claims": ("created_at",),
    "stock_movements": ("created_at",),
    "points_entries": ("created_at",),
    "refunds": ("created_at",),
}
SKUS = ("6901234567892", "6920202888883", "6954767423456", "6901028075831")


def agent_config(tmp_path: Path, claim_days: int, **retention: Any) -> Config:
    return validate_config({
        "storage": {"path": str(tmp_path / "posedge.db")},
        "api": {"token_file": str(tmp_path / "api-token")},
        "mqtt": {"enabled": False},
        "scanners": [],
        "printers": [{"type": "file", "name": "receipts", "path": "/dev/null"}],
        "points": {"claim_days": claim_days},
        "retention": retention,
    })


def backdate(conn: sqlite3.Connection, since: str, day: datetime, claim_days: int) -> None:
    """Move every timestamp written after `since` (real time) to `day` (simulated), keeping claims' validity."""
    at = day.isoformat()
    for table, columns in TIMESTAMPS.items():
        for column in columns:
            conn.execute(f"UPDATE {table} SET {column} = ? WHERE {column} >= ?", (at, since))
    rows = conn.execute("SELECT c.sale_id, s.recorded_at FROM pending_claims c JOIN sales s USING (sale_id)"
                        " WHERE c.expires_at >= ?", (since,)).fetchall()
    for sale_id, recorded_at in rows:  # a claim expires claim_days after its (backdated) sale
        expires = datetime.fromisoformat(recorded_at) + timedelta(days=claim_days)
        conn.execute("UPDATE pending_claims SET expires_at = ? WHERE sale_id = ?", (expires.isoformat(), sale_id))


def hq_acks_everything(conn: sqlite3.Connection) -> None:
    outbox.mark_acked_through(conn, outbox.max_seq(conn))


def stock_folded_by_hq(conn: sqlite3.Connection, version: int) -> list[dict[str, Any]]:
    through = conn.execute("SELECT coalesce(max(seq), 0) FROM stock_movements").fetchone()[0]
    return [{"sku": sku, "version": version, "qty": 1000, "through_seq": through} for sku in SKUS]


def size_of(path: Path) -> tuple[int, int]:
    """(database, WAL) bytes."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size, wal.stat().st_size if wal.exists() else 0


async def wait_printed(agent: Agent) -> None:
    def open_jobs(conn: sqlite3.Connection) -> int:
        return int(conn.execute("SELECT count(*) FROM print_jobs WHERE state IN ('pending', 'sending')").fetchone()[0])

    for _ in range(3000):
        if await agent.reader.read(open_jobs) == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the print queue did not drain")


async def run_days(tmp_path: Path, days: int, sales_per_day: int, claim_days: int = 30,
                   **retention: Any) -> list[tuple[int, int]]:
    """Sizes of the database (+ WAL) at the end of each simulated day."""
    config = agent_config(tmp_path, claim_days, **retention)
    agent = Agent(config)
    agent.retention.first_pass_delay_s = 10**6  # this test runs the passes itself, with its clock
    await agent.start()
    sizes = []
    start = datetime.now(timezone.utc) - timedelta(days=days + 1)
    try:
        for day_no in range(days):
            since = datetime.now(timezone.utc).isoformat()
            day = start + timedelta(days=day_no)
            for first in range(0, sales_per_day, 20):  # 20 tills at once: the group commit path too
                bodies = [sale_body(amount=100 + n, lines=[
                    {"sku": SKUS[(first + n) % 4], "qty": 1 + n % 3, "unit_price_fen": 100 + n},
                    {"sku": SKUS[(first + n + 1) % 4], "qty": 1, "unit_price_fen": 250}],
                    payments=[{"method": "cash", "amount_fen": (100 + n) * (1 + n % 3) + 250}])
                    for n in range(min(20, sales_per_day - first))]
                await asyncio.gather(*(agent.sales.record(SaleIn.model_validate(b)) for b in bodies))
            await wait_printed(agent)
            await agent.writer.write(hq_acks_everything)
            await agent.till.apply_from_hq("stock", await agent.reader.read(
                lambda conn, v=day_no + 1: stock_folded_by_hq(conn, v)))
            await agent.writer.write(lambda conn, s=since, d=day: backdate(conn, s, d, claim_days))
            await asyncio.to_thread(agent.retention.run_pass, day + timedelta(hours=23))
            sizes.append(size_of(config.storage.path))
        kept = await agent.reader.read(lambda conn: conn.execute("SELECT count(*) FROM sales").fetchone()[0])
        window = max(config.retention.sales_days, claim_days)  # a claimable sale is kept
        assert window * sales_per_day <= kept <= (window + 2) * sales_per_day, "the sales of the window are kept"
        assert agent.retention.deleted["sales"] > 0 and agent.retention.deleted["outbox"] > 0
    finally:
        await agent.stop()
    return sizes


def assert_levels_off(sizes: list[tuple[int, int]]) -> None:
    half = len(sizes) // 2
    first, second = sizes[half - 1][0], sizes[-1][0]
    # Pages freed by a pass are reused by the next days' sales: the second half adds (nearly) nothing.
    assert second <= first * 1.05 + 64 * 1024, f"database after half the run {first} B, at its end {second} B"
    wal_max = max(wal for _, wal in sizes)
    # The WAL starts over after each checkpoint and is cut back to the limit when it does; between two
    # resets a day's big transactions (this test's backdating) take it to about 2.6 times the limit.
    assert wal_max <= 3 * WAL_SIZE_LIMIT, f"the WAL reached {wal_max} B: {sizes}"


def test_a_short_run_of_days_levels_the_database_off(tmp_path: Path) -> None:
    sizes = asyncio.run(run_days(tmp_path, days=48, sales_per_day=40, claim_days=5, sales_days=7, outbox_acked_days=2,
                                 print_jobs_days=2, batch_rows=50))
    assert_levels_off(sizes)


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="two years of sales: POSEDGE_SLOW=1")
def test_two_years_of_sales_level_the_database_off(tmp_path: Path) -> None:
    sizes = asyncio.run(run_days(tmp_path, days=730, sales_per_day=200))
    assert_levels_off(sizes)
    print(f"database, WAL after year 1: {sizes[364]} B, after year 2: {sizes[-1]} B")
