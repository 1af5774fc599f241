"""Members as this store knows them, and the points ledger behind their balance.

HQ's records are written by agent/till/hq_records.py; local points entries by `add_points`. Balance = HQ's balance at
its version plus this store's entries after `points_through` (agent/domain/ledger.py).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from posedge.agent.domain.ledger import Position
from posedge.sync.ids import uuid7
from posedge.sync.outbox import append_event


@dataclass(frozen=True)
class Member:
    member_id: str
    tier: str | None
    known: bool  # False: identified by a signed code only; HQ's record has not arrived
    points_balance: int
    pending_points: int  # local entries HQ's balance does not include yet
    phone_masked: str | None = None
    card_no: str | None = None
    consent: bool = False
    version: int = 0

    def public(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "tier": self.tier, "known": self.known,
                "points_balance": self.points_balance, "pending_points": self.pending_points,
                "phone_masked": self.phone_masked, "consent": self.consent, "version": self.version}


def points_position(conn: sqlite3.Connection, member_id: str) -> Position:
    row = conn.execute("SELECT points_base, version, points_through FROM members WHERE member_id = ? AND deleted = 0",
                       (member_id,)).fetchone()
    return Position(*row) if row else Position(0, 0, 0)


def pending_points(conn: sqlite3.Connection, member_id: str, through: int) -> int:
    """Sum of this store's entries after `through` (the same rule as domain.ledger.current, in SQL)."""
    return conn.execute("SELECT coalesce(sum(delta), 0) FROM points_entries WHERE member_id = ? AND seq > ?",
                        (member_id, through)).fetchone()[0]


def balance(conn: sqlite3.Connection, member_id: str) -> int:
    position = points_position(conn, member_id)
    return position.base + pending_points(conn, member_id, position.through_seq)


def load_member(conn: sqlite3.Connection, member_id: str, tier_hint: str | None = None) -> Member:
    """The member with their balance; one known only from a code is still a member (unknown to HQ data)."""
    row = conn.execute("SELECT tier, phone_masked, card_no, consent, version, points_base, points_through FROM members"
                       " WHERE member_id = ? AND deleted = 0", (member_id,)).fetchone()
    position = Position(row[5], row[4], row[6]) if row else Position(0, 0, 0)
    pending = pending_points(conn, member_id, position.through_seq)
    if row is None:
        return Member(member_id, tier_hint, False, pending, pending)
    return Member(member_id, tier_hint or row[0], True, position.base + pending, pending,
                  row[1], row[2], bool(row[3]), row[4])


def member_by_card(conn: sqlite3.Connection, card_no: str) -> str | None:
    row = conn.execute("SELECT member_id FROM members WHERE card_no = ? AND deleted = 0", (card_no,)).fetchone()
    return row[0] if row else None


def member_by_phone_hash(conn: sqlite3.Connection, phone_hash: str) -> list[str]:
    rows = conn.execute("SELECT member_id FROM members WHERE phone_hash = ? AND deleted = 0 LIMIT 2", (phone_hash,))
    return [r[0] for r in rows]


def add_points(conn: sqlite3.Connection, member_id: str, deltas: list[tuple[int, str]], sale_id: str | None,
               refund_id: str | None, now: datetime) -> None:
    for delta, reason in deltas:
        entry_id = str(uuid7())
        seq = conn.execute("INSERT INTO points_entries"
                           " (entry_id, member_id, delta, reason, sale_id, refund_id, created_at)"
                           " VALUES (?,?,?,?,?,?,?) RETURNING seq",
                           (entry_id, member_id, delta, reason, sale_id, refund_id, now.isoformat())).fetchone()[0]
        append_event(conn, "points", member_id, {"entry_id": entry_id, "seq": seq, "member_id": member_id,
                                                 "delta": delta, "reason": reason, "sale_id": sale_id,
                                                 "refund_id": refund_id, "at": now.isoformat()})
