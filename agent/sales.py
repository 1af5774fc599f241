"""Recording sales: validate, then one writer transaction for the sale and everything it causes.

Everything a sale causes (print job, coupon redemptions, points, stock, outbox events) is written
by the same `work` function in the same transaction: all of it is recorded, or none of it.
Features add their part as a `SaleParticipant`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from posedge.agent.config import StoreConfig
from posedge.agent.domain.sales import SaleIn, SaleTotals, TotalsMismatch, mask_reference, sale_totals
from posedge.agent.errors import Conflict, InvalidInput, NotFound
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.sync.encoding import dumps
from posedge.sync.ids import uuid7
from posedge.sync.outbox import append_event


@dataclass(frozen=True)
class RecordedSale:
    sale_id: str
    receipt_no: str
    sale: SaleIn
    totals: SaleTotals
    occurred_at: datetime
    recorded_at: datetime
    business_day: str
    adjustment: Any = None  # what SalePricing.prepare returned (coupons, points), for the participants
    event_extra: dict[str, Any] = field(default_factory=dict)  # participants' fields for the sale event only


class SalePricing(Protocol):
    """Discounts decided before the transaction (coupons, points): verified, priced, off the writer thread."""

    async def prepare(self, sale: SaleIn) -> Any:
        """Returns an object with `extra_discount_fen`, handed to participants as RecordedSale.adjustment."""
        ...


class SaleParticipant(Protocol):
    """A feature's part of a sale, run inside the sale's transaction. Returns fields for the answer."""

    def record(self, conn: sqlite3.Connection, sale: RecordedSale) -> dict[str, Any]: ...


@dataclass(frozen=True)
class SaleOutcome:
    created: bool  # False: an identical retry answered with the original body
    body: dict[str, Any]


class SaleConflict(Conflict):
    code = "sale_conflict"
    message = "this sale_id was already recorded with a different body"


class TotalsInvalid(InvalidInput):
    code = "totals_mismatch"


class SaleService:
    def __init__(self, writer: StoreWriter, reader: StoreReader, store: StoreConfig) -> None:
        self.writer = writer
        self.reader = reader
        self.store = store
        self.zone = ZoneInfo(store.timezone)
        self.participants: list[SaleParticipant] = []
        self.pricing: SalePricing | None = None
        # Since start, counted once the commit returned (GET /v1/status `sales`, GET /metrics).
        self.counts = {"recorded": 0, "recorded_fen": 0, "replayed": 0, "conflicts": 0}

    async def record(self, sale: SaleIn) -> SaleOutcome:
        adjustment = await self.pricing.prepare(sale) if self.pricing is not None else None
        totals = self._totals(sale, adjustment.extra_discount_fen if adjustment is not None else 0)
        sale_id = sale.sale_id or str(uuid7())
        body_hash = sale.body_sha256()
        try:
            outcome = await self.writer.write(
                lambda conn: self._record(conn, sale, sale_id, body_hash, totals, adjustment))
        except SaleConflict:
            self.counts["conflicts"] += 1
            raise
        if outcome.created:
            self.counts["recorded"] += 1
            self.counts["recorded_fen"] += totals.total_fen
        else:
            self.counts["replayed"] += 1
        return outcome

    def status(self) -> dict[str, int]:
        """Sales since start: recorded (and their total in fen), identical retries answered, conflicts."""
        return dict(self.counts)

    def _totals(self, sale: SaleIn, extra_discount_fen: int = 0) -> SaleTotals:
        try:
            return sale_totals(sale, extra_discount_fen)
        except TotalsMismatch as exc:
            raise TotalsInvalid(str(exc), field="payments", expected_fen=exc.expected_fen,
                                found_fen=exc.found_fen) from None

    def _record(self, conn: sqlite3.Connection, sale: SaleIn, sale_id: str, body_hash: str, totals: SaleTotals,
                adjustment: Any = None) -> SaleOutcome:
        existing = conn.execute("SELECT body_sha256, response, receipt_no FROM sales WHERE sale_id = ?",
                                (sale_id,)).fetchone()
        if existing is not None:
            if existing[0] != body_hash:
                raise SaleConflict(sale_id=sale_id, receipt_no=existing[2])
            return SaleOutcome(created=False, body=json.loads(existing[1]))
        recorded = self._recorded_sale(conn, sale, sale_id, totals, adjustment)
        answer = _answer(recorded)
        body = dict(answer)
        _insert_sale(conn, recorded, body_hash, dumps(body))
        extra: dict[str, Any] = {}
        for participant in self.participants:
            extra.update(participant.record(conn, recorded))
        if extra:
            body.update(extra)
            conn.execute("UPDATE sales SET response = ? WHERE sale_id = ?", (dumps(body), sale_id))
        event = {**_sale_event(recorded, self.store, answer), **extra, **recorded.event_extra}
        append_event(conn, "sale", sale_id, event)
        return SaleOutcome(created=True, body=body)

    def _recorded_sale(self, conn: sqlite3.Connection, sale: SaleIn, sale_id: str, totals: SaleTotals,
                       adjustment: Any = None) -> RecordedSale:
        now = datetime.now(timezone.utc)
        day = now.astimezone(self.zone).strftime("%Y%m%d")
        receipt_no = f"{day}-{_next_receipt_seq(conn, day):04d}"
        return RecordedSale(sale_id, receipt_no, sale, totals, sale.occurred_at or now, now, day, adjustment)

    async def get(self, sale_id: str) -> dict[str, Any]:
        found = await self.reader.read(lambda conn: read_sale(conn, sale_id))
        if found is None:
            raise NotFound(f"no sale with sale_id {sale_id!r}", sale_id=sale_id)
        return found


def _next_receipt_seq(conn: sqlite3.Connection, day: str) -> int:
    return conn.execute(
        "INSERT INTO receipt_counters (business_day, last_no) VALUES (?, 1) "
        "ON CONFLICT (business_day) DO UPDATE SET last_no = last_no + 1 RETURNING last_no",
        (day,),
    ).fetchone()[0]


def _insert_sale(conn: sqlite3.Connection, r: RecordedSale, body_hash: str, response: str) -> None:
    s, t = r.sale, r.totals
    conn.execute(
        "INSERT INTO sales (sale_id, receipt_no, body_sha256, business_day, occurred_at, recorded_at, till, cashier,"
        " member_id, gross_fen, discount_fen, total_fen, paid_fen, response) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (r.sale_id, r.receipt_no, body_hash, r.business_day, r.occurred_at.isoformat(), r.recorded_at.isoformat(),
         s.till, s.cashier, s.member_id, t.gross_fen, t.discount_fen, t.total_fen, t.paid_fen, response),
    )
    conn.executemany(
        "INSERT INTO sale_lines (sale_id, line_no, sku, name, qty, unit, unit_price_fen, discount_fen, amount_fen)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        [(r.sale_id, i, l.sku, l.name, l.qty, l.unit, l.unit_price_fen, l.discount_fen, l.amount_fen)
         for i, l in enumerate(s.lines, 1)],
    )
    conn.executemany(
        "INSERT INTO sale_payments (sale_id, seq, method, amount_fen, reference_masked) VALUES (?,?,?,?,?)",
        [(r.sale_id, i, p.method, p.amount_fen, mask_reference(p.reference)) for i, p in enumerate(s.payments, 1)],
    )


def _answer(r: RecordedSale) -> dict[str, Any]:
    return {
        "sale_id": r.sale_id,
        "receipt_no": r.receipt_no,
        "recorded_at": r.recorded_at.isoformat(),
        "occurred_at": r.occurred_at.isoformat(),
        "gross_fen": r.totals.gross_fen,
        "discount_fen": r.totals.discount_fen,
        "total_fen": r.totals.total_fen,
        "paid_fen": r.totals.paid_fen,
    }


def _sale_event(r: RecordedSale, store: StoreConfig, answer: dict[str, Any]) -> dict[str, Any]:
    s = r.sale
    return {
        **answer,
        "tenant": store.tenant,
        "store_id": store.id,
        "business_day": r.business_day,
        "till": s.till,
        "cashier": s.cashier,
        "member_id": s.member_id,
        "lines": [
            {"sku": l.sku, "name": l.name, "qty": l.qty, "unit": l.unit, "unit_price_fen": l.unit_price_fen,
             "discount_fen": l.discount_fen, "amount_fen": l.amount_fen}
            for l in s.lines
        ],
        "payments": [
            {"method": p.method, "amount_fen": p.amount_fen, "reference": mask_reference(p.reference)}
            for p in s.payments
        ],
    }


def read_sale(conn: sqlite3.Connection, sale_id: str) -> dict[str, Any] | None:
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM sales WHERE sale_id = ?", (sale_id,)).fetchone()
    if row is None:
        return None
    lines = conn.execute(
        "SELECT line_no, sku, name, qty, unit, unit_price_fen, discount_fen, amount_fen FROM sale_lines"
        " WHERE sale_id = ? ORDER BY line_no", (sale_id,)).fetchall()
    payments = conn.execute(
        "SELECT seq, method, amount_fen, reference_masked AS reference FROM sale_payments"
        " WHERE sale_id = ? ORDER BY seq",
        (sale_id,)).fetchall()
    sale = {k: row[k] for k in row.keys() if k not in ("body_sha256", "response")}
    sale["lines"] = [dict(l) for l in lines]
    sale["payments"] = [dict(p) for p in payments]
    return sale

