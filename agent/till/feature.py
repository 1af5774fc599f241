"""The loop at the till: who the customer is, which coupons hold, what points do, in one sale.

`Till` composes the code verifier, the pure pricing, the coupon ledger and the points ledger:
  - `prepare(sale)` (SalePricing): verify the member and coupon codes, ask HQ to confirm (or learn
    that it cannot be asked), price the basket. Off the writer thread; nothing written.
  - `record(conn, sale)` (SaleParticipant): inside the sale's transaction, check the ledger
    (revoked, already redeemed, points balance), apply the offline policy, and write redemptions,
    points entries, stock movements, the pending claim and their outbox events.
  - `quote()`: the same verification and the same `price()` with read-only ledger checks.
Any refusal inside the transaction raises, so the sale and everything it caused roll back together.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from pydantic import Field, StrictInt

from posedge.agent.config import Config
from posedge.agent.domain.pricing import Line, Priced, price
from posedge.agent.domain.sales import SALE_ID, Code, InputModel, SaleIn, SaleLineIn
from posedge.agent.errors import InvalidInput, NotFound
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.agent.till.codes import (
    KINDS,
    AlreadyRedeemed,
    CodeRefused,
    CodeVerifier,
    CouponCode,
    Keyring,
    MemberCode,
    WrongMember,
    looks_like_code,
    peek_claims,
)
from posedge.agent.till.coupons import (
    CouponConfirmer,
    HqRefused,
    HqUnreachable,
    Override,
    RedemptionRequest,
    Unreachable,
    Verdict,
    ledger_refusal,
    offline_decision,
    verdicts,
)
from posedge.agent.till.hq_records import (
    ImportReport,
    PhoneHasher,
    apply_batch,
    last_hq_contact,
    parse_lines,
    record_hq_contact,
)
from posedge.agent.till.members import add_points, balance, load_member, member_by_card, member_by_phone_hash
from posedge.agent.till.pickups import collect_pickup, read_pickup
from posedge.agent.till.stock import move_stock, read_inventory
from posedge.sync.ids import uuid7
from posedge.sync.outbox import append_event

log = logging.getLogger("posedge.agent.till")

# Called after a commit with (event name, payload) for the POS event stream (agent/events.py).
Notify = Callable[[str, dict[str, Any]], None]
# Signs a claim code for a sale without a member: (sale_id, amount_fen, points, sold_at) -> token.
ClaimTokenSigner = Callable[[str, int, int, datetime], str]


# -- refusals that are about the basket, not the code ---------------------------------------------


class BasketRefused(CodeRefused):
    """A valid coupon or a points amount that this basket cannot take (docs/till.md)."""


def _refusal(code: str, message: str) -> type[BasketRefused]:
    return type(f"Refused_{code}", (BasketRefused,), {"code": code, "message": message})


BASKET_REFUSALS: dict[str, type[BasketRefused]] = {
    code: _refusal(code, message) for code, message in {
        "not_stackable": "this sale cannot take another coupon (stacking rules)",
        "min_spend_not_met": "the basket is below the coupon's minimum spend",
        "gift_not_in_basket": "the gift coupon's item is not in the basket",
        "no_benefit": "the coupon would take nothing off",
        "points_invalid_step": "points are spent in whole steps",
        "points_need_member": "spending points needs a member",
        "insufficient_points": "the member does not have that many points",
        "points_exceed_total": "the points would pay more than this sale allows",
    }.items()
}


class MemberMismatch(InvalidInput):
    code = "member_mismatch"
    message = "member_code and member_id name different members"


class MemberUnknown(NotFound):
    code = "member_not_found"
    message = "no member with this code, card number or phone"


# -- inputs ----------------------------------------------------------------------------------------


class QuoteIn(InputModel):
    lines: list[SaleLineIn] = Field(min_length=1, max_length=500)
    member_code: Code | None = None
    member_id: str | None = Field(None, pattern=SALE_ID)
    coupons: list[Code] = Field(default_factory=list, max_length=20)
    points_redeemed: StrictInt = Field(0, ge=0, le=10**9)


class CollectIn(InputModel):
    code: Code | None = Field(None, description="the pickup code as scanned; checked against the order when given")
    till: str | None = Field(None, pattern=SALE_ID)
    cashier: str | None = Field(None, max_length=64)


# -- what prepare() hands to record() --------------------------------------------------------------


@dataclass(frozen=True)
class TillSale:
    member_id: str | None
    tier: str | None
    coupons: tuple[CouponCode, ...]
    priced: Priced
    confirmations: dict[str, Verdict | Unreachable] = field(default_factory=dict)

    @property
    def extra_discount_fen(self) -> int:
        return self.priced.till_discount_fen


@dataclass(frozen=True)
class Replay:
    """A retry of a recorded sale whose codes no longer verify (expired since): answer the original."""

    extra_discount_fen: int


def pricing_lines(lines: Iterable[SaleLineIn]) -> list[Line]:
    return [Line(l.sku, l.gross_fen, l.discount_fen, l.unit_price_fen if l.unit == "pcs" else None) for l in lines]


class Till:
    name = "till"

    def __init__(self, config: Config, reader: StoreReader, writer: StoreWriter, *,
                 clock: Callable[[], float] = time.time,
                 confirmer: CouponConfirmer | None = None, notify: Notify | None = None,
                 claim_signer: ClaimTokenSigner | None = None) -> None:
        self.config = config
        self.reader = reader
        self.writer = writer
        self.clock = clock
        self.confirmer: CouponConfirmer = confirmer or HqUnreachable()
        self.listeners: list[Notify] = []  # events for the POS (pickup collected, coupon verdicts)
        self.notify: Notify = notify or self._tell_listeners
        self.claim_signer = claim_signer
        self.verifier = CodeVerifier(Keyring(config.hq.public_keys, config.hq.retired_kids), config.store.id,
                                     config.hq.clock_skew_s, config.members.code_max_age_s, clock)
        secret = config.members.phone_hash_key
        self.phones = PhoneHasher(secret.get_secret_value() if secret is not None else None)
        self.rules = config.points.rules()
        self.stacking = config.coupons.stacking()

    # -- the feature's lifecycle (agent/feature.py): nothing runs between sales ---------------
    @property
    def participants(self) -> tuple["Till"]:
        return (self,)

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def reconfigure(self, old: Config, new: Config) -> None:
        """Live: the tables the till reads are rebuilt here or read per sale from `self.config`."""
        self.verifier = CodeVerifier(Keyring(new.hq.public_keys, new.hq.retired_kids), new.store.id,
                                     new.hq.clock_skew_s, new.members.code_max_age_s, self.clock)
        self.rules = new.points.rules()
        self.stacking = new.coupons.stacking()
        self.config = new

    def _tell_listeners(self, event: str, payload: dict[str, Any]) -> None:
        for listener in list(self.listeners):
            listener(event, payload)

    # -- identification ------------------------------------------------------------------------
    def _member_from_code(self, member_code: str | None, member_id: str | None) -> tuple[str | None, str | None]:
        if member_code is None:
            return member_id, None
        code = self.verifier.verify(member_code, kind="member")
        if member_id is not None and member_id != code.sub:
            raise MemberMismatch(member_id=member_id)
        return code.sub, code.tier

    async def _tier(self, member_id: str | None, tier: str | None) -> str | None:
        if member_id is None or tier is not None:
            return tier
        row = await self.reader.read(lambda c: c.execute("SELECT tier FROM members WHERE member_id = ? AND deleted = 0",
                                                          (member_id,)).fetchone())
        return row[0] if row else None

    def _coupons(self, codes: Iterable[str], member_id: str | None) -> list[CouponCode]:
        out = []
        for index, token in enumerate(codes):
            try:
                out.append(self._coupon(token, member_id))
            except CodeRefused as exc:
                exc.details.setdefault("coupon_index", index)
                raise
        return out

    def _coupon(self, token: str, member_id: str | None) -> CouponCode:
        coupon = self.verifier.verify(token, kind="coupon", member_id=member_id)
        if coupon.sub is not None and member_id is None:
            raise WrongMember("the coupon is bound to a member: identify the member first")
        return coupon

    # -- SalePricing -----------------------------------------------------------------------------
    async def prepare(self, sale: SaleIn) -> TillSale | Replay:
        try:
            return await self._prepare(sale)
        except CodeRefused as exc:
            replay = await self._replay(sale.sale_id)
            if replay is None:
                log.info("event=sale_refused reason=%s sale_id=%s till=%s", exc.code, sale.sale_id, sale.till)
                raise
            return replay

    async def _prepare(self, sale: SaleIn) -> TillSale:
        member_id, tier = self._member_from_code(sale.member_code, sale.member_id)
        tier = await self._tier(member_id, tier)
        coupons = self._coupons(sale.coupons, member_id)
        # The balance read here lets the sale refuse with the same reason as the quote; record() checks
        # it again inside the transaction, where it is authoritative.
        available = await self._balance(member_id) if member_id is not None and sale.points_redeemed else None
        priced = price(pricing_lines(sale.lines), coupons, self.stacking, self.rules, tier, sale.points_redeemed,
                       points_available=available)
        _raise_basket_refusals(priced)
        confirmations = await self._confirm(priced, sale, member_id)
        return TillSale(member_id, tier, tuple(coupons), priced, confirmations)

    async def _balance(self, member_id: str) -> int:
        return await self.reader.read(lambda conn: balance(conn, member_id))

    async def _confirm(self, priced: Priced, sale: SaleIn, member_id: str | None) -> dict[str, Verdict | Unreachable]:
        timeout = self.config.coupons.confirm_timeout_ms / 1000
        out: dict[str, Verdict | Unreachable] = {}
        for outcome in priced.coupons:
            request = RedemptionRequest(outcome.coupon.jti, outcome.coupon.cmp, sale.sale_id, member_id,
                                        outcome.discount_fen, sale.till)
            try:
                out[outcome.coupon.jti] = await asyncio.wait_for(self.confirmer.confirm(request, timeout), timeout)
            except asyncio.TimeoutError:
                out[outcome.coupon.jti] = Unreachable("HQ did not answer in time")
        return out

    async def _replay(self, sale_id: str | None) -> Replay | None:
        if sale_id is None:
            return None

        def read(conn: sqlite3.Connection) -> Replay | None:
            sale = conn.execute("SELECT 1 FROM sales WHERE sale_id = ?", (sale_id,)).fetchone()
            if sale is None:
                return None
            row = conn.execute("SELECT coupon_discount_fen + points_discount_fen FROM till_sales WHERE sale_id = ?",
                               (sale_id,)).fetchone()
            return Replay(row[0] if row else 0)

        return await self.reader.read(read)

    # -- SaleParticipant -----------------------------------------------------------------------------
    def record(self, conn: sqlite3.Connection, sale: Any) -> dict[str, Any]:
        till_sale: TillSale = sale.adjustment
        if not isinstance(till_sale, TillSale):
            return {}
        try:
            return self._record(conn, sale, till_sale)
        except CodeRefused as exc:  # the whole sale rolls back
            log.info("event=sale_refused reason=%s sale_id=%s till=%s", exc.code, sale.sale_id, sale.sale.till)
            raise

    def _record(self, conn: sqlite3.Connection, sale: Any, till_sale: TillSale) -> dict[str, Any]:
        now = datetime.now(timezone.utc)
        answer: dict[str, Any] = {"coupon_discount_fen": till_sale.priced.coupon_discount_fen,
                                  "points_discount_fen": till_sale.priced.points_discount_fen,
                                  "points_redeemed": till_sale.priced.points_redeemed}
        answer["coupons"] = self._redeem(conn, sale, till_sale, now)
        if till_sale.member_id is not None:
            answer.update(self._points(conn, sale, till_sale.member_id, till_sale, now))
        else:
            answer.update(self._claim(conn, sale, till_sale, now))
        self._stock_out(conn, sale, now)
        if till_sale.member_id is not None or till_sale.coupons or till_sale.priced.points_redeemed:
            _insert_till_sale(conn, sale.sale_id, till_sale)
        return answer

    def _redeem(self, conn: sqlite3.Connection, sale: Any, till_sale: TillSale, now: datetime) -> list[dict[str, Any]]:
        out = []
        override = sale.sale.coupon_override
        for index, outcome in enumerate(till_sale.priced.coupons):
            coupon = outcome.coupon
            refusal = ledger_refusal(conn, coupon)
            if refusal is not None:
                refusal.details.update(coupon_id=coupon.jti, coupon_index=index)
                raise refusal
            mode, limit = self._decide(conn, till_sale.confirmations.get(coupon.jti), outcome.discount_fen, sale,
                                       override, index, coupon)
            redemption_id = str(uuid7())
            try:
                conn.execute(
                    "INSERT INTO coupon_redemptions (redemption_id, coupon_id, campaign, sale_id, member_id,"
                    " discount_fen, mode, till, business_day, override_by, override_reason, redeemed_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (redemption_id, coupon.jti, coupon.cmp, sale.sale_id, till_sale.member_id, outcome.discount_fen,
                     mode, sale.sale.till, sale.business_day, override.manager if mode == "override" else None,
                     override.reason if mode == "override" else None, now.isoformat()))
            except sqlite3.IntegrityError:  # the unique index is the last word
                raise AlreadyRedeemed(coupon_id=coupon.jti, coupon_index=index) from None
            item = {"coupon_id": coupon.jti, "campaign": coupon.cmp, "discount_fen": outcome.discount_fen, "mode": mode}
            append_event(conn, "redemption", coupon.jti, {
                **item, "redemption_id": redemption_id, "sale_id": sale.sale_id, "member_id": till_sale.member_id,
                "till": sale.sale.till, "override": _override(override, mode, limit), "redeemed_at": now.isoformat(),
            })
            out.append(item)
        return out

    def _decide(self, conn: sqlite3.Connection, confirmation: Verdict | Unreachable | None, discount_fen: int,
                sale: Any, override: Any, index: int, coupon: CouponCode) -> tuple[str, str | None]:
        if isinstance(confirmation, Verdict):
            if confirmation.accepted:
                return "online", None
            raise HqRefused(f"HQ refused this coupon: {confirmation.reason}", reason=confirmation.reason,
                            coupon_id=coupon.jti, coupon_index=index)
        manager = Override(override.manager, override.reason) if override is not None else None
        try:
            decision = offline_decision(conn, self.config.coupons.offline, discount_fen, sale.sale.till,
                                        sale.business_day, manager)
        except CodeRefused as exc:
            exc.details.update(coupon_id=coupon.jti, coupon_index=index)
            raise
        return decision.mode, decision.limit

    def _points(self, conn: sqlite3.Connection, sale: Any, member_id: str, till_sale: TillSale,
                now: datetime) -> dict[str, Any]:
        priced = till_sale.priced
        before = balance(conn, member_id)
        if priced.points_redeemed > before:
            raise BASKET_REFUSALS["insufficient_points"](points_balance=before)
        entries = [(-priced.points_redeemed, "redeem"), (priced.points_earned, "earn")]
        add_points(conn, member_id, [(d, r) for d, r in entries if d], sale.sale_id, None, now)
        if sale.sale.member_id != member_id:
            conn.execute("UPDATE sales SET member_id = ? WHERE sale_id = ?", (member_id, sale.sale_id))
        after = before - priced.points_redeemed + priced.points_earned
        return {"member_id": member_id, "points_earned": priced.points_earned, "points_balance": after}

    def _claim(self, conn: sqlite3.Connection, sale: Any, till_sale: TillSale, now: datetime) -> dict[str, Any]:
        points = till_sale.priced.points_earned
        expires = sale.recorded_at + timedelta(days=self.config.points.claim_days)
        token = None  # no store key: the claim is kept without a code to scan
        if self.claim_signer is not None:
            token = self.claim_signer(sale.sale_id, sale.totals.total_fen, points, sale.recorded_at)
        conn.execute("INSERT INTO pending_claims (sale_id, points, amount_fen, expires_at, token, created_at)"
                     " VALUES (?,?,?,?,?,?)", (sale.sale_id, points, sale.totals.total_fen, expires.isoformat(), token,
                                               now.isoformat()))
        sale.event_extra["claim"] = {"points": points, "amount_fen": sale.totals.total_fen,
                                     "expires_at": expires.isoformat(), "token": token}
        return {"points_earned": 0, "claim_code": token, "claim_points": points,
                "claim_expires_at": expires.isoformat()}

    def _stock_out(self, conn: sqlite3.Connection, sale: Any, now: datetime) -> None:
        moves = [(l.sku, -l.qty) for l in sale.sale.lines]
        sale.event_extra["stock_movements"] = move_stock(conn, moves, "sale", sale.sale_id, None, now)

    # -- quote -------------------------------------------------------------------------------------
    async def quote(self, q: QuoteIn) -> dict[str, Any]:
        member_id, tier = self._member_from_code(q.member_code, q.member_id)
        tier = await self._tier(member_id, tier)
        verified: dict[int, CouponCode] = {}
        refused: list[dict[str, Any]] = []
        for index, token in enumerate(q.coupons):
            try:
                verified[index] = self._coupon(token, member_id)
            except CodeRefused as exc:
                refused.append({"coupon_index": index, "coupon_id": _peek_id(token), "applied": False,
                                "reason": exc.code})
        state = await self.reader.read(lambda conn: _quote_state(conn, list(verified.values()), member_id))
        for index, coupon in list(verified.items()):
            if coupon.jti in state.refusals:
                refused.append({"coupon_index": index, "coupon_id": coupon.jti, "applied": False,
                                "reason": state.refusals[coupon.jti]})
                del verified[index]
        priced = price(pricing_lines(q.lines), list(verified.values()), self.stacking, self.rules, tier,
                       q.points_redeemed, points_available=state.balance)
        outcomes = [{"coupon_index": i, **o.as_dict()} for i, o in zip(verified, priced.coupons)]
        return quote_answer(priced, member_id, tier, state.balance, sorted(outcomes + refused,
                                                                           key=lambda c: c["coupon_index"]))

    # -- look-ups ------------------------------------------------------------------------------------
    async def lookup_member(self, code: str) -> dict[str, Any]:
        code = code.strip()
        if looks_like_code(code):
            claims = self.verifier.verify(code, kind="member")
            member = await self.reader.read(lambda conn: load_member(conn, claims.sub, claims.tier))
            return {"found_by": "member_code", **member.public()}
        member_id, found_by = await self.reader.read(lambda conn: self._static_lookup(conn, code))
        member = await self.reader.read(lambda conn: load_member(conn, member_id))
        return {"found_by": found_by, **member.public()}

    def _static_lookup(self, conn: sqlite3.Connection, text: str) -> tuple[str, str]:
        member_id = member_by_card(conn, text)
        if member_id is not None:
            return member_id, "card_no"
        if not self.phones.enabled:
            raise MemberUnknown("no member with this card number (phone look-up needs [members] phone_hash_key)")
        phone_hash = self.phones.hash(text)
        if phone_hash is None:
            raise MemberUnknown()
        found = member_by_phone_hash(conn, phone_hash)
        if len(found) != 1:
            raise MemberUnknown("several members share this phone; scan the member code" if found else None)
        return found[0], "phone"

    async def validate_coupon(self, token: str, member_code: str | None = None,
                              member_id: str | None = None) -> dict[str, Any]:
        claims = peek_claims(token)
        try:
            member, _ = self._member_from_code(member_code, member_id)
            coupon = self.verifier.verify(token, kind="coupon", member_id=member)
            refusal = await self.reader.read(lambda conn: ledger_refusal(conn, coupon))
        except CodeRefused as exc:
            return {"valid": False, "reason": exc.code, "message": exc.message, "claims": claims}
        if refusal is not None:
            return {"valid": False, "reason": refusal.code, "message": refusal.message, "claims": coupon.public()}
        return {"valid": True, "claims": coupon.public(), "member_bound": coupon.sub is not None}

    async def pickup(self, order_id: str) -> dict[str, Any]:
        order = await self.reader.read(lambda conn: read_pickup(conn, order_id))
        if order is None:
            raise NotFound(f"no pickup order {order_id!r} for this store", order_id=order_id)
        return order

    async def collect(self, order_id: str, body: CollectIn) -> dict[str, Any]:
        if body.code is not None:
            code = self.verifier.verify(body.code, kind="pickup")
            if code.oid != order_id:
                raise InvalidInput("the pickup code is for another order", code_order_id=code.oid)
        result = await self.writer.write(lambda conn: collect_pickup(conn, order_id, body.till, body.cashier))
        log.info("event=pickup_collected order_id=%s till=%s", order_id, body.till)
        self.notify("pickup_collected", {"order_id": order_id, "collected_at": result["collected_at"]})
        return result

    async def inventory(self, sku: str) -> dict[str, Any]:
        return await self.reader.read(lambda conn: read_inventory(conn, sku))

    # -- scans -------------------------------------------------------------------------------------
    async def scan_resolver(self, classified: Any, scan: Any) -> dict[str, Any] | None:
        """The scan pipeline's resolver hook for kinds member, coupon and pickup (agent/scans/pipeline.py)."""
        return await self.resolve_scan(classified.text)

    async def resolve_scan(self, text: str) -> dict[str, Any] | None:
        """A member/coupon/pickup code -> who or what, valid or why not. None: not a signed code."""
        if not looks_like_code(text):
            return None
        try:
            claims = self.verifier.verify(text)
        except CodeRefused as exc:
            # The unverified payload may hold anything: a list or an object under "k" is "unknown" too.
            k = (peek_claims(text) or {}).get("k")
            kind = KINDS.get(k, "unknown") if isinstance(k, str) else "unknown"
            return {"kind": kind, "valid": False, "reason": exc.code, "message": exc.message}
        if isinstance(claims, MemberCode):
            member = await self.reader.read(lambda conn: load_member(conn, claims.sub, claims.tier))
            return {"kind": "member", "valid": True, "member": member.public()}
        if isinstance(claims, CouponCode):
            refusal = await self.reader.read(lambda conn: ledger_refusal(conn, claims))
            out = {"kind": "coupon", "valid": refusal is None, "coupon": claims.public(),
                   "member_bound": claims.sub is not None}
            return out if refusal is None else {**out, "reason": refusal.code, "message": refusal.message}
        order = await self.reader.read(lambda conn: read_pickup(conn, claims.oid))
        if order is None:
            return {"kind": "pickup", "valid": False, "reason": "not_found", "order_id": claims.oid,
                    "message": "HQ has not sent this order to the store yet"}
        return {"kind": "pickup", "valid": order["state"] == "ready" and order["collected"] is None,
                "pickup": order}

    # -- HQ down-messages ------------------------------------------------------------------------------
    async def apply_from_hq(self, kind: str, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Validate and apply HQ records in one transaction, count it as contact with HQ, then tell the POS
        about double-redemption verdicts. Bad records are reported."""
        report = ImportReport()

        def work(conn: sqlite3.Connection) -> list[Any]:
            return self.apply_hq_records(conn, kind, records, report)

        self.announce_hq_records(kind, await self.writer.write(work))
        return report.as_dict()

    def apply_hq_records(self, conn: sqlite3.Connection, kind: str, records: Iterable[dict[str, Any]],
                         report: ImportReport) -> list[Any]:
        """In the caller's writer transaction (the sync inbox's): the records of one kind through the
        import's apply logic, counted in `report`; returns the ones applied (for announce_hq_records)."""
        parsed = parse_lines(kind, (json.dumps(r) for r in records), report)
        applied = apply_batch(conn, kind, parsed, self.phones, self.config.store.id, report)
        record_hq_contact(conn, "link")
        return applied

    def announce_hq_records(self, kind: str, applied: list[Any]) -> None:
        """After the commit: tell the POS what it must know of them (double redemptions)."""
        if kind != "verdicts":
            return
        for record in applied:
            if record.verdict == "double_redemption":
                log.warning("event=coupon_double_redemption coupon_id=%s other_store=%s", record.coupon_id,
                            record.other_store)
                self.notify("coupon_verdict", record.model_dump(exclude={"deleted"}))

    # -- status ------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The `till` section of GET /v1/status. Reads the database: call off the loop."""
        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            contact = last_hq_contact(conn)
            offline = conn.execute("SELECT count(*) FROM coupon_redemptions WHERE mode != 'online'"
                                   " AND returned_at IS NULL").fetchone()[0]
            return {"hq_kids": self.verifier.keyring.kids, "retired_kids": sorted(self.config.hq.retired_kids),
                    "last_hq_contact_at": contact.isoformat() if contact else None,
                    "confirmer": self.confirmer.describe(),
                    "offline_redemptions": offline, "coupon_verdicts": verdicts(conn)}
        return self.reader.read_sync(read)


def _insert_till_sale(conn: sqlite3.Connection, sale_id: str, t: TillSale) -> None:
    lines = json.dumps([l.as_dict() for l in t.priced.lines], separators=(",", ":"))
    conn.execute("INSERT INTO till_sales (sale_id, member_id, tier, coupon_discount_fen, points_redeemed,"
                 " points_discount_fen, points_earned, lines) VALUES (?,?,?,?,?,?,?,?)",
                 (sale_id, t.member_id, t.tier, t.priced.coupon_discount_fen, t.priced.points_redeemed,
                  t.priced.points_discount_fen, t.priced.points_earned if t.member_id else 0, lines))


# -- helpers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _QuoteState:
    refusals: dict[str, str]
    balance: int | None


def _quote_state(conn: sqlite3.Connection, coupons: list[CouponCode], member_id: str | None) -> _QuoteState:
    refusals = {}
    for coupon in coupons:
        refusal = ledger_refusal(conn, coupon)
        if refusal is not None:
            refusals[coupon.jti] = refusal.code
    return _QuoteState(refusals, balance(conn, member_id) if member_id is not None else None)


def _raise_basket_refusals(priced: Priced) -> None:
    for index, outcome in enumerate(priced.coupons):
        if outcome.reason is not None:
            raise BASKET_REFUSALS[outcome.reason](coupon_id=outcome.coupon.jti, coupon_index=index)
    if priced.points_reason is not None:
        raise BASKET_REFUSALS[priced.points_reason]()


def _override(override: Any, mode: str, limit: str | None) -> dict[str, Any] | None:
    if mode != "override":
        return None
    return {"manager": override.manager, "reason": override.reason, "limit": limit}


def _peek_id(token: str) -> str | None:
    claims = peek_claims(token) or {}
    jti = claims.get("jti")
    return jti if isinstance(jti, str) else None


def quote_answer(priced: Priced, member_id: str | None, tier: str | None, points_balance: int | None,
                 coupons: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "member_id": member_id, "tier": tier,
        "lines": [{"line_no": i, **l.as_dict()} for i, l in enumerate(priced.lines, 1)],
        "gross_fen": priced.gross_fen, "line_discount_fen": priced.line_discount_fen,
        "coupon_discount_fen": priced.coupon_discount_fen, "points_discount_fen": priced.points_discount_fen,
        "discount_fen": priced.discount_fen, "total_fen": priced.total_fen,
        "coupons": coupons,
        "points_redeemed": priced.points_redeemed, "points_reason": priced.points_reason,
        "points_earned": priced.points_earned if member_id is not None else 0,
        "claim_points": priced.points_earned if member_id is None else 0,
        "points_balance": points_balance,
    }


def receipt_facts(conn: sqlite3.Connection, sale: Any) -> dict[str, Any]:
    """What the receipt shows of the till's part of a sale, read back in the sale's own transaction:
    the member (masked phone, tier, points earned and balance), the coupons redeemed, and the claim
    token of a sale without a member. A receipts contributor (docs/receipts.md)."""
    facts: dict[str, Any] = {}
    row = conn.execute("SELECT member_id, tier, points_earned FROM till_sales WHERE sale_id = ?",
                       (sale.sale_id,)).fetchone()
    if row is not None and row[0] is not None:
        member = conn.execute("SELECT phone_masked FROM members WHERE member_id = ?", (row[0],)).fetchone()
        facts["member"] = {"phone": member[0] if member else None, "level": row[1], "points_earned": row[2],
                           "points_balance": balance(conn, row[0])}
    coupons = conn.execute("SELECT coupon_id, campaign, discount_fen FROM coupon_redemptions WHERE sale_id = ?"
                           " ORDER BY rowid", (sale.sale_id,)).fetchall()
    if coupons:
        facts["discounts"] = [{"label": f"优惠券 {campaign}", "amount_fen": amount, "kind": "coupon", "code": coupon_id}
                              for coupon_id, campaign, amount in coupons]
    claim = conn.execute("SELECT token FROM pending_claims WHERE sale_id = ?", (sale.sale_id,)).fetchone()
    if claim is not None and claim[0]:
        facts["extra"] = {"claim_code": claim[0]}
    return facts
