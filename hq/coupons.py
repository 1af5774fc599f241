"""Coupons at HQ: online confirmation (first redemption wins) and double redemptions found in the uplink.

A coupon is held by at most one store: `coupon_redemptions` has one row per (tenant, coupon_id). An online
confirmation that HQ accepts makes a `held` row for the asking store and request; the store's `redemption`
event (up batch) turns it `redeemed`. A hold with no redemption after HOLD_S lapses: the sale it was asked
for never committed (docs/till.md), and the coupon is free again. The same store asking again while it
holds the coupon is accepted (its own ledger is the last word inside a store; a retried sale asks anew).
A `redemption_returned` event (a full refund gave the coupon back) frees the coupon.

Every answer is kept in `coupon_confirmations` under (tenant, store, request_no): the same request number
asked again gets the same answer, as a payment platform's idempotency key needs.

A `redemption` event from a store while another store holds the coupon is a double redemption (accepted
offline, or offline at one and online at the other): kept in `coupon_double_redemptions`, and both stores
are told (hq/verdicts.py). A row stays un-`notified_at` until the verdicts went out, so a crash between
finding and telling tells on the batch's resend.

Revocations are not known at HQ yet (no table of them): `revoked` is never answered; a store refuses
a revoked coupon itself from the revocations HQ pushed down.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from posedge.hq.db import Database
from posedge.sync.down import ConfirmRequest
from posedge.sync.protocol import Batch

HOLD_S = 900  # an accepted online confirmation holds its coupon this long waiting for the redemption event


@dataclass(frozen=True)
class Answer:
    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class DoubleRedemption:
    tenant: str
    coupon_id: str
    store: str  # the store whose redemption came second
    other_store: str  # the store that held the coupon
    sale_id: str | None
    mode: str | None


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _stamp(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _lapsed(state: str, held_at: str, now: datetime) -> bool:
    return state == "held" and datetime.fromisoformat(held_at) < now - timedelta(seconds=HOLD_S)


# -- online confirmation -----------------------------------------------------------------------------


def answer_confirm(database: Database, request: ConfirmRequest, now: datetime | None = None) -> Answer:
    """First redemption wins; the same (store, request_no) always gets its first answer. One transaction."""
    moment = now or _now()
    with database.transaction():
        given = _given_answer(database, request)
        if given is not None:
            return given
        answer = _decide(database, request, moment)
        inserted = database.execute(
            "INSERT INTO coupon_confirmations VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (request.tenant, request.store, request.request_no, request.coupon_id, request.sale_id,
             int(answer.accepted), answer.reason, _stamp(moment))).rowcount
        if inserted == 0:  # another HQ worker answered the same request first: its answer stands
            given = _given_answer(database, request)
            assert given is not None
            return given
        return answer


def _given_answer(database: Database, request: ConfirmRequest) -> Answer | None:
    row = database.execute("SELECT accepted, reason FROM coupon_confirmations WHERE tenant = ? AND store_id = ?"
                           " AND request_no = ?", (request.tenant, request.store, request.request_no)).one()
    return Answer(bool(row[0]), row[1]) if row else None


def _decide(database: Database, request: ConfirmRequest, now: datetime) -> Answer:
    won = database.execute(
        "INSERT INTO coupon_redemptions VALUES (?, ?, ?, 'held', ?, ?, NULL, ?, NULL) ON CONFLICT DO NOTHING",
        (request.tenant, request.coupon_id, request.store, request.request_no, request.sale_id,
         _stamp(now))).rowcount
    if won:
        return Answer(True)
    store, state, held_at = _holder(database, request.tenant, request.coupon_id)
    if state == "held" and (store == request.store or _lapsed(state, held_at, now)):
        database.execute("UPDATE coupon_redemptions SET store_id = ?, request_no = ?, sale_id = ?, held_at = ?"
                         " WHERE tenant = ? AND coupon_id = ?",
                         (request.store, request.request_no, request.sale_id, _stamp(now), request.tenant,
                          request.coupon_id))
        return Answer(True)
    return Answer(False, "already_redeemed")


def _holder(database: Database, tenant: str, coupon_id: str) -> tuple[str, str, str]:
    row = database.execute("SELECT store_id, state, held_at FROM coupon_redemptions WHERE tenant = ? AND coupon_id = ?"
                           + database.lock_row, (tenant, coupon_id)).one()
    assert row is not None  # the INSERT above found it
    return str(row[0]), str(row[1]), str(row[2])


# -- redemptions in the uplink ----------------------------------------------------------------------


def apply_redemptions(database: Database, batch: Batch, acked_seq: int, now: datetime | None = None
                      ) -> list[DoubleRedemption]:
    """The batch's redemption events HQ now holds (seq <= acked_seq, fresh or resent: each is idempotent);
    returns the double redemptions not yet told to the stores. One transaction."""
    moment = now or _now()
    events = [e for e in batch.events if e.seq <= acked_seq and e.kind in ("redemption", "redemption_returned")]
    if not events:
        return []
    with database.transaction():
        for event in events:
            coupon_id = event.payload.get("coupon_id")
            if not isinstance(coupon_id, str) or not coupon_id:
                continue  # kept in `events`; nothing to hold
            if event.kind == "redemption":
                _redeemed(database, batch.tenant, batch.store, coupon_id, event.payload, moment)
            else:
                database.execute("DELETE FROM coupon_redemptions WHERE tenant = ? AND coupon_id = ? AND store_id = ?",
                                 (batch.tenant, coupon_id, batch.store))
        return _untold(database, batch.tenant, batch.store)


def _redeemed(database: Database, tenant: str, store: str, coupon_id: str, payload: dict[str, Any],
              now: datetime) -> None:
    sale_id, mode = _text(payload.get("sale_id")), _text(payload.get("mode"))
    stamp = _stamp(now)
    won = database.execute(
        "INSERT INTO coupon_redemptions VALUES (?, ?, ?, 'redeemed', NULL, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        (tenant, coupon_id, store, sale_id, mode, stamp, stamp)).rowcount
    if won:
        return
    holder, state, held_at = _holder(database, tenant, coupon_id)
    if holder == store or _lapsed(state, held_at, now):
        database.execute("UPDATE coupon_redemptions SET store_id = ?, state = 'redeemed', sale_id = ?, mode = ?,"
                         " redeemed_at = ? WHERE tenant = ? AND coupon_id = ?",
                         (store, sale_id, mode, stamp, tenant, coupon_id))
        return
    database.execute("INSERT INTO coupon_double_redemptions VALUES (?, ?, ?, ?, ?, ?, ?, NULL) ON CONFLICT DO NOTHING",
                     (tenant, coupon_id, store, holder, sale_id, mode, stamp))


def _untold(database: Database, tenant: str, store: str) -> list[DoubleRedemption]:
    rows = database.execute("SELECT coupon_id, other_store, sale_id, mode FROM coupon_double_redemptions"
                            " WHERE tenant = ? AND store_id = ? AND notified_at IS NULL", (tenant, store)).rows
    return [DoubleRedemption(tenant, str(r[0]), store, str(r[1]), r[2], r[3]) for r in rows]


def mark_told(database: Database, found: list[DoubleRedemption], now: datetime | None = None) -> None:
    stamp = _stamp(now or _now())
    with database.transaction():
        for double in found:
            database.execute("UPDATE coupon_double_redemptions SET notified_at = ? WHERE tenant = ? AND coupon_id = ?"
                             " AND store_id = ?", (stamp, double.tenant, double.coupon_id, double.store))


def _text(value: Any) -> str | None:
    return value[:128] if isinstance(value, str) else None
