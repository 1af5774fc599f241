"""Refunds: full or partial, idempotent on the POS's refund id; they reverse points and stock.

A refund names lines and quantities (none: everything not yet refunded). Money, points earned and
points spent are handed back by cumulative shares (agent/domain/ledger.py `share`), so any
sequence of partial refunds that adds up to the whole sale returns exactly the whole: no fen or
point lost or invented. Whether coupons come back is `[coupons] return_on_refund`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydantic import Field, StrictInt

from posedge.agent.domain.ledger import share
from posedge.agent.domain.sales import SALE_ID, InputModel
from posedge.agent.errors import Conflict, InvalidInput, NotFound
from posedge.agent.store.writer import StoreWriter
from posedge.agent.till.members import add_points, balance
from posedge.agent.till.stock import move_stock
from posedge.sync.outbox import append_event


class RefundLineIn(InputModel):
    line_no: StrictInt = Field(ge=1, le=500, description="the sale's line number (1-based)")
    qty: StrictInt = Field(gt=0, le=100_000_000, description="how much of the line comes back (pcs, g or ml)")


class RefundIn(InputModel):
    refund_id: str = Field(pattern=SALE_ID,
                           description="POS's id for the refund; a retry with the same id is answered once")
    lines: list[RefundLineIn] | None = Field(None, min_length=1, max_length=500,
                                             description="absent: everything not yet refunded; never empty")
    reason: str | None = Field(None, max_length=200)
    till: str | None = Field(None, pattern=SALE_ID)
    cashier: str | None = Field(None, max_length=64)

    def body_sha256(self, sale_id: str) -> str:
        body = {"sale_id": sale_id, **self.model_dump(mode="json")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class RefundConflict(Conflict):
    code = "refund_conflict"
    message = "this refund_id was already used with a different body"


class RefundTooMuch(InvalidInput):
    code = "refund_exceeds_sale"
    message = "more would be refunded than was sold"


@dataclass(frozen=True)
class SoldLine:
    line_no: int
    sku: str
    qty: int
    gross_fen: int
    net_fen: int  # what the customer paid for the line, after every discount


@dataclass(frozen=True)
class SaleFacts:
    sale_id: str
    member_id: str | None
    points_earned: int
    points_redeemed: int
    lines: list[SoldLine]
    refunded: dict[int, int]  # line_no -> qty already refunded


class Refunds:
    def __init__(self, writer: StoreWriter, return_coupons: str = "full_refund") -> None:
        self.writer = writer
        self.return_coupons = return_coupons
        # Since start, counted once the commit returned (GET /v1/status `refunds`, GET /metrics).
        self.counts = {"recorded": 0, "refunded_fen": 0, "replayed": 0}

    async def refund(self, sale_id: str, body: RefundIn) -> tuple[bool, dict[str, Any]]:
        """(created, answer). An identical retry answers the original (created False)."""
        created, answer = await self.writer.write(lambda conn: self._refund(conn, sale_id, body))
        if created:
            self.counts["recorded"] += 1
            self.counts["refunded_fen"] += answer["refund_fen"]
        else:
            self.counts["replayed"] += 1
        return created, answer

    def status(self) -> dict[str, int]:
        return dict(self.counts)

    def _refund(self, conn: sqlite3.Connection, sale_id: str, body: RefundIn) -> tuple[bool, dict[str, Any]]:
        digest = body.body_sha256(sale_id)
        done = conn.execute("SELECT body_sha256, response FROM refunds WHERE refund_id = ?",
                            (body.refund_id,)).fetchone()
        if done is not None:
            if done[0] != digest:
                raise RefundConflict(refund_id=body.refund_id)
            return False, json.loads(done[1])
        facts = load_sale_facts(conn, sale_id)
        wanted = _wanted(facts, body)
        now = datetime.now(timezone.utc)
        answer, movements = self._apply(conn, facts, wanted, body, now)
        conn.execute("INSERT INTO refunds (refund_id, sale_id, body_sha256, refund_fen, lines, response, created_at)"
                     " VALUES (?,?,?,?,?,?,?)", (body.refund_id, sale_id, digest, answer["refund_fen"],
                                                 json.dumps(answer["lines"]), json.dumps(answer), now.isoformat()))
        append_event(conn, "refund", body.refund_id, {**answer, "reason": body.reason, "till": body.till,
                                                      "cashier": body.cashier, "stock_movements": movements,
                                                      "at": now.isoformat()})
        return True, answer

    def _apply(self, conn: sqlite3.Connection, facts: SaleFacts, wanted: dict[int, int], body: RefundIn,
               now: datetime) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        lines: list[dict[str, Any]] = []
        refund_fen = 0
        weight_total = sum(_weight(l, facts) for l in facts.lines)
        weight_before = weight_after = 0
        for line in facts.lines:
            before = facts.refunded.get(line.line_no, 0)
            after = before + wanted.get(line.line_no, 0)
            weight_before += _weight(line, facts) * before // line.qty
            weight_after += _weight(line, facts) * after // line.qty
            if after == before:
                continue
            fen = share(line.net_fen, after, before, line.qty)
            refund_fen += fen
            lines.append({"line_no": line.line_no, "sku": line.sku, "qty": after - before, "refund_fen": fen})
        returned = [(l["sku"], l["qty"]) for l in lines]
        movements = move_stock(conn, returned, "refund", facts.sale_id, body.refund_id, now)
        complete = all(facts.refunded.get(l.line_no, 0) + wanted.get(l.line_no, 0) == l.qty for l in facts.lines)
        answer: dict[str, Any] = {"refund_id": body.refund_id, "sale_id": facts.sale_id, "refund_fen": refund_fen,
                                  "lines": lines, "complete": complete}
        if facts.member_id is not None:
            answer.update(self._points(conn, facts, facts.member_id, weight_before, weight_after, weight_total,
                                       body.refund_id, now))
        else:
            answer.update(_claim(conn, facts.sale_id, weight_before, weight_after, weight_total))
        answer["coupons_returned"] = self._coupons(conn, facts.sale_id, body.refund_id, complete, now)
        return answer, movements

    def _points(self, conn: sqlite3.Connection, facts: SaleFacts, member_id: str, before: int, after: int,
                total: int, refund_id: str, now: datetime) -> dict[str, Any]:
        reversed_ = share(facts.points_earned, after, before, total)
        returned = share(facts.points_redeemed, after, before, total)
        deltas = [(-reversed_, "refund_earn"), (returned, "refund_redeem")]
        add_points(conn, member_id, [(d, r) for d, r in deltas if d], facts.sale_id, refund_id, now)
        return {"member_id": member_id, "points_reversed": reversed_, "points_returned": returned,
                "points_balance": balance(conn, member_id)}

    def _coupons(self, conn: sqlite3.Connection, sale_id: str, refund_id: str, complete: bool,
                 now: datetime) -> list[str]:
        if self.return_coupons != "full_refund" or not complete:
            return []
        rows = conn.execute("UPDATE coupon_redemptions SET returned_at = ?, refund_id = ? WHERE sale_id = ?"
                            " AND returned_at IS NULL RETURNING coupon_id",
                            (now.isoformat(), refund_id, sale_id)).fetchall()
        for (coupon_id,) in rows:
            append_event(conn, "redemption_returned", coupon_id, {"coupon_id": coupon_id, "sale_id": sale_id,
                                                                  "refund_id": refund_id, "at": now.isoformat()})
        return [r[0] for r in rows]


def _claim(conn: sqlite3.Connection, sale_id: str, before: int, after: int, total: int) -> dict[str, Any]:
    """A refunded sale is worth fewer points to whoever claims it later (HQ reads the refund event)."""
    row = conn.execute("SELECT points FROM pending_claims WHERE sale_id = ?", (sale_id,)).fetchone()
    if row is None:
        return {}
    reversed_ = share(row[0], after, before, total)
    conn.execute("UPDATE pending_claims SET points_refunded = points_refunded + ? WHERE sale_id = ?",
                 (reversed_, sale_id))
    return {"claim_points_reversed": reversed_}


def _weight(line: SoldLine, facts: SaleFacts) -> int:
    # Points follow the money actually paid; a sale paid entirely by coupons and points follows gross.
    return line.net_fen if any(l.net_fen for l in facts.lines) else line.gross_fen or line.qty


def _wanted(facts: SaleFacts, body: RefundIn) -> dict[int, int]:
    by_no = {l.line_no: l for l in facts.lines}
    if body.lines is None:
        per_line = {l.line_no: l.qty - facts.refunded.get(l.line_no, 0) for l in facts.lines}
        everything_left = {k: v for k, v in per_line.items() if v > 0}
        if not everything_left:
            raise RefundTooMuch("everything on this sale has already been refunded", sale_id=facts.sale_id)
        return everything_left
    wanted: dict[int, int] = {}
    for item in body.lines:
        if item.line_no not in by_no:
            raise InvalidInput(f"the sale has no line {item.line_no}", field="lines", line_no=item.line_no)
        wanted[item.line_no] = wanted.get(item.line_no, 0) + item.qty
    for line_no, qty in wanted.items():
        left = by_no[line_no].qty - facts.refunded.get(line_no, 0)
        if qty > left:
            raise RefundTooMuch(f"line {line_no}: {qty} asked, {left} left to refund", line_no=line_no, left=left)
    return wanted


def load_sale_facts(conn: sqlite3.Connection, sale_id: str) -> SaleFacts:
    sale = conn.execute("SELECT member_id FROM sales WHERE sale_id = ?", (sale_id,)).fetchone()
    if sale is None:
        raise NotFound(f"no sale with sale_id {sale_id!r}", sale_id=sale_id)
    rows = conn.execute("SELECT line_no, sku, qty, unit_price_fen, discount_fen, amount_fen FROM sale_lines"
                        " WHERE sale_id = ? ORDER BY line_no", (sale_id,)).fetchall()
    till = conn.execute("SELECT member_id, points_earned, points_redeemed, lines FROM till_sales WHERE sale_id = ?",
                        (sale_id,)).fetchone()
    priced = json.loads(till[3]) if till else None
    lines = [SoldLine(r[0], r[1], r[2], r[5] + r[4], priced[i]["net_fen"] if priced else r[5])
             for i, r in enumerate(rows)]
    refunded: dict[int, int] = {}
    for (blob,) in conn.execute("SELECT lines FROM refunds WHERE sale_id = ?", (sale_id,)):
        for item in json.loads(blob):
            refunded[item["line_no"]] = refunded.get(item["line_no"], 0) + item["qty"]
    member_id = till[0] if till else None
    return SaleFacts(sale_id, member_id, till[1] if till else 0, till[2] if till else 0, lines, refunded)
