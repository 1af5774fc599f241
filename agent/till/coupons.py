"""Coupon redemption: the local ledger, HQ revocations, online confirmation and the offline policy.

A coupon id is redeemed at most once in this store: the unique index `coupon_redeemed_once` is the
last word, and every redemption is written by the single writer, so two tills racing for one
coupon get one winner and one `already_redeemed`.

Online confirmation goes through the narrow `CouponConfirmer` seam. Until the MQTT
request/response of the sync issue fills it, the only confirmer is `HqUnreachable`, which says
exactly that; the offline policy (`[coupons.offline]`) then decides.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from posedge.agent.till.codes import AlreadyRedeemed, CodeRefused, CouponCode, Revoked
from posedge.agent.till.config import OfflineCouponPolicy
from posedge.agent.till.hq_records import last_hq_contact

# -- online confirmation seam --------------------------------------------------------------------


@dataclass(frozen=True)
class RedemptionRequest:
    coupon_id: str
    campaign: str
    sale_id: str | None
    member_id: str | None
    discount_fen: int
    till: str | None


@dataclass(frozen=True)
class Verdict:
    """HQ answered: accepted, or refused with a reason code (already_redeemed, revoked...)."""

    accepted: bool
    reason: str | None = None


@dataclass(frozen=True)
class Unreachable:
    """HQ could not be asked (no link, timeout). The offline policy decides."""

    why: str


class CouponConfirmer(Protocol):
    async def confirm(self, request: RedemptionRequest, timeout_s: float) -> Verdict | Unreachable: ...

    def describe(self) -> str:
        """One line for GET /v1/status: can HQ be asked now, and if not why."""
        ...


class HqUnreachable:
    """The confirmer while there is no link to HQ: it truthfully reports that HQ cannot be asked."""

    why = "no HQ link configured"

    async def confirm(self, request: RedemptionRequest, timeout_s: float) -> Verdict | Unreachable:
        return Unreachable(self.why)

    def describe(self) -> str:
        return f"unreachable: {self.why}"


# -- refusals beyond the code's own ----------------------------------------------------------------


class OfflineLimit(CodeRefused):
    """HQ cannot confirm and the offline policy does not allow this one without a manager."""

    code = "offline_limit"
    message = "HQ cannot confirm this coupon now and the offline limits are reached"


class HqRefused(CodeRefused):
    code = "hq_refused"
    message = "HQ refused this redemption"


# -- ledger checks ---------------------------------------------------------------------------------


def ledger_refusal(conn: sqlite3.Connection, coupon: CouponCode) -> CodeRefused | None:
    """revoked / already_redeemed from the local ledger and HQ's revocations; None when clear."""
    revoked = conn.execute(
        "SELECT scope FROM revocations WHERE revoked = 1"
        " AND ((scope = 'coupon' AND ref = ?) OR (scope = 'campaign' AND ref = ?))",
        (coupon.jti, coupon.cmp)).fetchone()
    if revoked is not None:
        return Revoked(f"HQ has revoked this {revoked[0]}", scope=revoked[0])
    at_hq = conn.execute("SELECT status, redeemed_at_store FROM hq_coupons WHERE coupon_id = ? AND deleted = 0"
                         " AND status IN ('revoked', 'redeemed')", (coupon.jti,)).fetchone()
    if at_hq is not None and at_hq[0] == "revoked":
        return Revoked("HQ has revoked this coupon", scope="coupon")
    if at_hq is not None:
        return AlreadyRedeemed(f"HQ says it was redeemed at store {at_hq[1] or 'another store'}",
                               store=at_hq[1])
    taken = conn.execute("SELECT sale_id FROM coupon_redemptions WHERE coupon_id = ? AND returned_at IS NULL",
                         (coupon.jti,)).fetchone()
    if taken is not None:
        return AlreadyRedeemed()
    return None


@dataclass(frozen=True)
class Override:
    manager: str
    reason: str


@dataclass(frozen=True)
class OfflineDecision:
    mode: str  # "offline" (within the policy) or "override" (a manager took responsibility)
    limit: str | None  # which limit was passed, for an override


def offline_decision(conn: sqlite3.Connection, policy: OfflineCouponPolicy, discount_fen: int, till: str | None,
                     business_day: str, override: Override | None, now: datetime | None = None) -> OfflineDecision:
    """Accept within the offline policy, else take a manager override if allowed, else refuse."""
    limit = _passed_limit(conn, policy, discount_fen, till, business_day, now or datetime.now(timezone.utc))
    if limit is None:
        return OfflineDecision("offline", None)
    if policy.beyond == "override" and override is not None:
        return OfflineDecision("override", limit)
    hint = " (a manager override on the sale can accept it)" if policy.beyond == "override" else ""
    raise OfflineLimit(f"HQ cannot confirm this coupon and {limit}{hint}", limit=limit)


def _passed_limit(conn: sqlite3.Connection, policy: OfflineCouponPolicy, discount_fen: int, till: str | None,
                  day: str, now: datetime) -> str | None:
    if not policy.accept:
        return "offline acceptance is off"
    if discount_fen > policy.max_value_fen:
        return f"its value {discount_fen} fen is above the offline limit of {policy.max_value_fen} fen"
    count = conn.execute("SELECT count(*) FROM coupon_redemptions WHERE mode = 'offline' AND business_day = ?"
                         " AND till IS ?", (day, till)).fetchone()[0]
    if count >= policy.max_per_day_per_till:
        return f"this till has accepted {count} coupons offline today (limit {policy.max_per_day_per_till})"
    if policy.max_hours_since_hq:
        contact = last_hq_contact(conn)
        if contact is None:
            return "HQ has never been heard from"
        if now - contact > timedelta(hours=policy.max_hours_since_hq):
            return f"HQ was last heard from at {contact.isoformat()} (limit {policy.max_hours_since_hq} h)"
    return None


def verdicts(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    """HQ's double-redemption verdicts on coupons this store accepted, newest first."""
    rows = conn.execute(
        "SELECT v.coupon_id, v.verdict, v.other_store, v.detail, v.received_at, r.sale_id, r.mode"
        " FROM coupon_verdicts v"
        " LEFT JOIN coupon_redemptions r ON r.coupon_id = v.coupon_id WHERE v.verdict = 'double_redemption'"
        " ORDER BY v.received_at DESC LIMIT 50").fetchall()
    keys = ("coupon_id", "verdict", "other_store", "detail", "received_at", "sale_id", "mode")
    return [dict(zip(keys, row)) for row in rows]
