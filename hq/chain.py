"""The chain's member, coupon, order, claim, stock, pickup and erasure rules at HQ (docs/hq-api.md).

Plain functions over `Database`, each run by the caller inside one transaction; hq/http.py is the HTTP
face. Anything that must reach the stores goes through `down_hook.push` in the same transaction.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

from posedge.hq import down, down_hook, ledger
from posedge.hq.db import Database
from posedge.hq.settings import HqConfig
from posedge.sync.codes import CodeRefused, CodeVerifier, Keyring, peek_claims
from posedge.sync.encoding import dumps


class ChainError(Exception):
    """An answer other than success: `code` for machines, `status` for HTTP, details beside the message."""

    def __init__(self, status: int, code: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def _iso(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def body_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


# -- members ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemberView:
    member_id: str
    tier: str
    points_balance: int
    spend_fen: int
    window_days: int
    marketing_consent: bool
    stores: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "tier": self.tier, "points_balance": self.points_balance,
                "spend_fen": self.spend_fen, "window_days": self.window_days,
                "marketing_consent": self.marketing_consent, "stores": self.stores}


def _scalar(database: Database, sql: str, params: tuple[Any, ...]) -> Any:
    row = database.execute(sql, params).one()
    return row[0] if row else None


def balance(database: Database, tenant: str, member: str) -> int:
    return int(_scalar(database, "SELECT coalesce(sum(delta), 0) FROM points_ledger WHERE tenant = ? AND member_id = ?",
                       (tenant, member)))


def spend(database: Database, config: HqConfig, member: str, now: datetime) -> int:
    since = _iso(now - timedelta(days=config.tiers.window_days))
    return int(_scalar(database, "SELECT coalesce(sum(amount_fen), 0) FROM member_spend WHERE tenant = ? AND"
                       " member_id = ? AND at >= ?", (config.tenant, member, since)))


def member_stores(database: Database, tenant: str, member: str) -> list[str]:
    rows = database.execute("SELECT store_id FROM member_stores WHERE tenant = ? AND member_id = ? ORDER BY store_id",
                            (tenant, member)).rows
    return [str(r[0]) for r in rows]


def known(database: Database, tenant: str, member: str) -> bool:
    for table in ("members", "member_stores", "points_ledger", "member_spend"):
        if database.execute(f"SELECT 1 FROM {table} WHERE tenant = ? AND member_id = ? LIMIT 1",
                            (tenant, member)).one():
            return True
    return False


def member(database: Database, config: HqConfig, member_id: str, create: bool = False) -> MemberView:
    """The member as HQ sees it now; a tier that moved with the spend (either channel) is recorded and pushed
    to the stores that hold the member. `create`: a member first seen online (the mini-program signs them up)."""
    tenant, now = config.tenant, now_utc()
    if not create and not known(database, tenant, member_id):
        raise ChainError(404, "unknown_member", f"no member {member_id!r} at HQ", member_id=member_id)
    row = database.execute("SELECT tier, marketing_consent FROM members WHERE tenant = ? AND member_id = ?",
                           (tenant, member_id)).one()
    spent = spend(database, config, member_id, now)
    tier = config.tiers.tier_for(spent)
    if row is None:
        database.execute("INSERT INTO members VALUES (?, ?, ?, ?, ?, ?)",
                         (tenant, member_id, tier, 0, _iso(now), _iso(now)))
    elif row[0] != tier:
        database.execute("UPDATE members SET tier = ?, updated_at = ? WHERE tenant = ? AND member_id = ?",
                         (tier, _iso(now), tenant, member_id))
    consent = bool(row[1]) if row is not None else False
    stores = member_stores(database, tenant, member_id)
    if row is None and tier != config.tiers.levels[0].name or row is not None and row[0] != tier:
        push_member(database, tenant, member_id, tier, consent, stores)
    return MemberView(member_id, tier, balance(database, tenant, member_id), spent, config.tiers.window_days,
                      consent, stores)


def push_member(database: Database, tenant: str, member_id: str, tier: str, consent: bool, stores: list[str]) -> None:
    """A member record per store (agent/till/hq_records.py MemberRecord): the tier, HQ's balance, and how far that
    store's own points entries are in it, so the store adds only its entries HQ has not counted yet. `consent` is
    HQ's view only (no API sets it yet), so it is not sent: the store keeps its own."""
    points = balance(database, tenant, member_id)
    for store in stores:
        through = _scalar(database, "SELECT coalesce(max(store_seq), 0) FROM points_ledger WHERE tenant = ? AND"
                          " member_id = ? AND store_id = ?", (tenant, member_id, store))
        # No card, phone or consent: HQ does not hold them here, and a field left out keeps the store's.
        down_hook.push(database, tenant, store, "members", [
            {"member_id": member_id, "tier": tier, "points": points, "points_through": int(through)}])


def add_points(database: Database, tenant: str, member_id: str, delta: int, reason: str, ref: str,
               store: str | None = None) -> None:
    database.execute("INSERT INTO points_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (tenant, str(uuid.uuid4()), member_id, store, None, delta, reason, ref, _iso(now_utc())))


def member_code(database: Database, config: HqConfig, minter: Any, member_id: str) -> dict[str, Any]:
    view = member(database, config, member_id, create=True)
    assert config.signing is not None
    ttl = config.signing.member_code_ttl_s
    return {"member_id": member_id, "tier": view.tier, "code": minter.member(member_id, view.tier, ttl_s=ttl),
            "expires_at": _iso(now_utc() + timedelta(seconds=ttl))}


# -- coupons ---------------------------------------------------------------------------------------


def known_store(database: Database, tenant: str, store: str) -> bool:
    return bool(database.execute("SELECT 1 FROM stores WHERE tenant = ? AND store_id = ?", (tenant, store)).one()
                or database.execute("SELECT 1 FROM streams WHERE tenant = ? AND store_id = ? LIMIT 1",
                                    (tenant, store)).one())


def check_stores(database: Database, tenant: str, stores: list[str]) -> None:
    unknown = [s for s in stores if not known_store(database, tenant, s)]
    if unknown:
        raise ChainError(422, "unknown_store", f"no store {unknown[0]!r} in tenant {tenant!r}", stores=unknown)


def issue_coupon(database: Database, config: HqConfig, minter: Any, member_id: str, coupon: dict[str, Any]) -> dict[
        str, Any]:
    tenant = config.tenant
    member(database, config, member_id, create=True)
    stores: list[str] | None = coupon["stores"]
    if stores is not None:
        check_stores(database, tenant, stores)
    coupon_id = coupon["coupon_id"] or str(uuid.uuid4())
    if database.execute("SELECT 1 FROM coupons WHERE tenant = ? AND coupon_id = ?", (tenant, coupon_id)).one():
        raise ChainError(409, "coupon_exists", f"coupon {coupon_id!r} is issued already", coupon_id=coupon_id)
    benefit = {k: coupon[k] for k in ("amount_off_fen", "percent_off", "cap_fen", "gift_sku") if coupon[k] is not None}
    code = minter.coupon(coupon_id, coupon["campaign"], off=coupon["amount_off_fen"], pct=coupon["percent_off"],
                         cap=coupon["cap_fen"], gift=coupon["gift_sku"], min=coupon["min_spend_fen"], st=stores,
                         sub=member_id, nbf=coupon["valid_from"], exp=coupon["valid_until"])
    database.execute("INSERT INTO coupons VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (tenant, coupon_id, member_id, coupon["campaign"], dumps(benefit), coupon["min_spend_fen"],
                      None if stores is None else dumps(stores), coupon["valid_from"], coupon["valid_until"],
                      _iso(now_utc())))
    record = {"coupon_id": coupon_id, "status": "issued", "campaign": coupon["campaign"]}  # agent: CouponRecord
    for scope in stores if stores is not None else [None]:
        down_hook.push(database, tenant, scope, "coupons", [record])
    return {"coupon_id": coupon_id, "member_id": member_id, "campaign": coupon["campaign"], **benefit,
            "min_spend_fen": coupon["min_spend_fen"], "stores": stores, "valid_from": coupon["valid_from"],
            "valid_until": coupon["valid_until"], "code": code}


# -- online orders and claims -------------------------------------------------------------------------


def online_order(database: Database, config: HqConfig, order: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """(created, answer). The same order id again: the same answer if the body is the same, else 409."""
    tenant, digest = config.tenant, body_hash(order)
    held = database.execute("SELECT body_sha256 FROM online_orders WHERE tenant = ? AND order_id = ?",
                            (tenant, order["order_id"])).one()
    member_id = order["member_id"]
    if held is not None:
        if held[0] != digest:
            raise ChainError(409, "order_conflict", f"order {order['order_id']!r} exists with another body",
                             order_id=order["order_id"])
        return False, _order_answer(order, member(database, config, member_id), False)
    before = member(database, config, member_id, create=True)
    if order["points_spent"] > before.points_balance:
        raise ChainError(422, "insufficient_points", "the member has fewer points than the order spends",
                         points_balance=before.points_balance, points_spent=order["points_spent"])
    now = _iso(now_utc())
    database.execute("INSERT INTO online_orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                     (tenant, order["order_id"], member_id, order["amount_fen"], order["points_earned"],
                      order["points_spent"], digest, now))
    database.execute("INSERT INTO member_spend VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (tenant, "online_order", order["order_id"], member_id, None, order["amount_fen"], now))
    for delta, reason in ((-order["points_spent"], "online_spend"), (order["points_earned"], "online_earn")):
        if delta:
            add_points(database, tenant, member_id, delta, reason, f"order/{order['order_id']}")
    after = member(database, config, member_id)
    return True, _order_answer(order, after, after.tier != before.tier)


def _order_answer(order: dict[str, Any], view: MemberView, changed: bool) -> dict[str, Any]:
    return {"order_id": order["order_id"], "member_id": view.member_id, "amount_fen": order["amount_fen"],
            "points_earned": order["points_earned"], "points_spent": order["points_spent"],
            "points_balance": view.points_balance, "tier": view.tier, "tier_changed": changed,
            "spend_fen": view.spend_fen}


def _claim_token(text: str) -> str:
    """The JWS at the end of the QR's text (`[receipt] claim_url` + token, or the token alone)."""
    token = text.rsplit("/", 1)[-1].rsplit("=", 1)[-1].rsplit("?", 1)[-1]
    if token.count(".") != 2:
        raise ChainError(422, "claim_invalid", "the claim code is not a signed receipt code", reason="malformed")
    return token


def claim(database: Database, config: HqConfig, claim_code: str, member_id: str) -> dict[str, Any]:
    tenant = config.tenant
    token = _claim_token(claim_code)
    unverified = peek_claims(token) or {}
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or issuer.count("/") != 1:
        raise ChainError(422, "claim_invalid", "the claim code names no store (iss)", reason="malformed")
    claim_tenant, store = issuer.split("/")
    if claim_tenant != tenant:
        raise ChainError(422, "claim_invalid", f"the receipt is of tenant {claim_tenant[:64]!r}", reason="wrong_tenant")
    keys = {str(k): str(x) for k, x in database.execute(
        "SELECT kid, x FROM store_keys WHERE tenant = ? AND store_id = ?", (tenant, store)).rows}
    if not keys:
        raise ChainError(422, "claim_invalid", f"HQ holds no public key of store {store[:64]!r} (yet)",
                         reason="unknown_store_key")
    try:
        claims = CodeVerifier(Keyring(keys), store_id=store).verify_signature(token)
    except CodeRefused as exc:
        raise ChainError(422, "claim_invalid", exc.message, reason=exc.code) from None
    sale_id, points, amount, exp = claims.get("sub"), claims.get("pts"), claims.get("amt"), claims.get("exp")
    if not isinstance(sale_id, str) or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                               for v in (points, amount, exp)):
        raise ChainError(422, "claim_invalid", "the claim code lacks sub, pts, amt or exp", reason="malformed")
    assert isinstance(points, int) and isinstance(amount, int) and isinstance(exp, int)
    if exp < now_utc().timestamp():
        raise ChainError(422, "claim_invalid", "the claim code has expired", reason="expired")
    held = database.execute("SELECT claimed_at FROM claims WHERE tenant = ? AND store_id = ? AND sale_id = ?",
                            (tenant, store, sale_id)).one()
    if held is not None:
        raise ChainError(409, "already_claimed", "this receipt's points are claimed already", store_id=store,
                         sale_id=sale_id, claimed_at=held[0])
    reversed_points = int(_scalar(database, "SELECT coalesce(sum(points), 0) FROM claim_reversals WHERE tenant = ?"
                                  " AND store_id = ? AND sale_id = ?", (tenant, store, sale_id)))
    credited = max(points - reversed_points, 0)
    member(database, config, member_id, create=True)
    now = _iso(now_utc())
    database.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, ?, ?)",
                     (tenant, store, sale_id, member_id, credited, amount, now))
    if credited:
        add_points(database, tenant, member_id, credited, "claim", f"{store}/{sale_id}", store)
    database.execute("INSERT INTO member_spend VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, "claim", f"{store}/{sale_id}", member_id, store, amount, now))
    database.execute("INSERT INTO member_stores VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, member_id, store, now))
    view = member(database, config, member_id)
    return {"store_id": store, "sale_id": sale_id, "points_credited": credited,
            "points_reversed_by_refunds": min(reversed_points, points), "points_balance": view.points_balance,
            "tier": view.tier}


# -- stock and pickups -----------------------------------------------------------------------------


def _distance_km(lat1: float, lng1: float, lat2: float, lng2: float) -> float:
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lng2 - lng1))
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 6371.0088 * 2 * math.asin(math.sqrt(a))


def stock(database: Database, tenant: str, sku: str, near: tuple[float, float] | None) -> dict[str, Any]:
    rows = database.execute(
        "SELECT l.store_id, l.on_hand, l.as_of, s.name, s.lat, s.lng FROM stock_levels l LEFT JOIN stores s"
        " ON s.tenant = l.tenant AND s.store_id = l.store_id WHERE l.tenant = ? AND l.sku = ? ORDER BY l.store_id",
        (tenant, sku)).rows
    stores = []
    for store, on_hand, as_of, name, lat, lng in rows:
        entry: dict[str, Any] = {"store_id": store, "name": name, "on_hand": int(on_hand), "as_of": as_of}
        if near is not None:
            entry["distance_km"] = None if lat is None or lng is None else round(
                _distance_km(near[0], near[1], float(lat), float(lng)), 3)
        stores.append(entry)
    if near is not None:  # nearest first; stores without a location last
        stores.sort(key=lambda e: (e["distance_km"] is None, e["distance_km"] or 0.0, e["store_id"]))
    return {"sku": sku, "total_on_hand": sum(e["on_hand"] for e in stores), "stores": stores}


PICKUP_CODE_TTL_S = 7 * 86400


def book_pickup(database: Database, tenant: str, order: dict[str, Any], minter: Any = None) -> tuple[
        bool, dict[str, Any]]:
    """(created, answer); the answer carries `code`, the signed pickup code (k=p) the mini-program shows and the
    store verifies at collection (null when HQ has no [signing] key). The same order id again: the same order
    (a fresh code) if the body is the same, else 409."""
    created, answer = _book_pickup(database, tenant, order)
    code = minter.pickup(order["order_id"], order["store_id"], ttl_s=PICKUP_CODE_TTL_S) if minter else None
    return created, {**answer, "code": code}


def _book_pickup(database: Database, tenant: str, order: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    digest = body_hash(order)
    held = database.execute("SELECT body_sha256 FROM pickups WHERE tenant = ? AND order_id = ?",
                            (tenant, order["order_id"])).one()
    if held is not None:
        if held[0] != digest:
            raise ChainError(409, "pickup_conflict", f"pickup {order['order_id']!r} exists with another body",
                             order_id=order["order_id"])
        return False, pickup(database, tenant, order["order_id"])
    check_stores(database, tenant, [order["store_id"]])
    database.execute("INSERT INTO pickups VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     (tenant, order["order_id"], order["store_id"], order["member_id"], dumps(order["items"]),
                      order["phone_masked"], digest, _iso(now_utc()), None))
    if order["member_id"] is not None:
        database.execute("INSERT INTO member_stores VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (tenant, order["member_id"], order["store_id"], _iso(now_utc())))
    down_hook.push(database, tenant, order["store_id"], "pickups", [
        {"order_id": order["order_id"], "store_id": order["store_id"], "state": "ready", "items": order["items"],
         "phone_masked": order["phone_masked"], "member_id": order["member_id"]}])
    return True, pickup(database, tenant, order["order_id"])


def pickup(database: Database, tenant: str, order_id: str) -> dict[str, Any]:
    row = database.execute("SELECT store_id, items, created_at, collected_at FROM pickups WHERE tenant = ? AND"
                           " order_id = ?", (tenant, order_id)).one()
    if row is None:
        raise ChainError(404, "unknown_pickup", f"no pickup order {order_id!r}", order_id=order_id)
    store, items, created, collected = row
    return {"order_id": order_id, "store_id": store, "items": orjson.loads(items), "booked_at": created,
            "state": "collected" if collected else "booked", "collected": collected is not None,
            "collected_at": collected}


# -- erasure (PIPL) --------------------------------------------------------------------------------


ERASED = down.ERASED
pseudonym = down.pseudonym


def erase(database: Database, tenant: str, member_id: str, requested_by: str) -> dict[str, Any]:
    """Purge the member at HQ, record the erasure for every store that holds them, keep an audit row (who, when)
    that says nothing of the member. The books stay under a pseudonym (`erased:<erasure_id>`), as at the store:
    points entries, spend, orders, claims, coupons and pickups keep their amounts, lose the member id, and the
    pickups their masked phone; raw events have the id replaced; HQ's down log loses the member's records
    (hq/down.py `purge_member`). What is personal and nothing else (the member row, which stores hold them)
    is deleted."""
    if not known(database, tenant, member_id):
        raise ChainError(404, "unknown_member", f"no member {member_id!r} at HQ", member_id=member_id)
    erasure_id = str(uuid.uuid4())
    stores = member_stores(database, tenant, member_id)
    placeholder = pseudonym(erasure_id)
    ledger.forget_member(database, tenant, member_id, placeholder)
    down.purge_member(database, tenant, member_id)
    now = _iso(now_utc())
    database.execute("INSERT INTO erasures VALUES (?, ?, ?, ?)", (tenant, erasure_id, requested_by, now))
    for store in stores:
        database.execute("INSERT INTO erasure_acks VALUES (?, ?, ?, ?)", (tenant, erasure_id, store, None))
        down_hook.push(database, tenant, store, "erase", [{"member_id": member_id, "erasure_id": erasure_id}],
                       private=("erasure_id",))
    return {"erasure_id": erasure_id, "requested_by": requested_by, "requested_at": now, "stores": stores,
            "pending": len(stores)}


def erasure(database: Database, tenant: str, erasure_id: str) -> dict[str, Any]:
    row = database.execute("SELECT requested_by, requested_at FROM erasures WHERE tenant = ? AND erasure_id = ?",
                           (tenant, erasure_id)).one()
    if row is None:
        raise ChainError(404, "unknown_erasure", f"no erasure {erasure_id!r}", erasure_id=erasure_id)
    acks = database.execute("SELECT store_id, acked_at FROM erasure_acks WHERE tenant = ? AND erasure_id = ?"
                            " ORDER BY store_id", (tenant, erasure_id)).rows
    return {"erasure_id": erasure_id, "requested_by": row[0], "requested_at": row[1],
            "stores": [{"store_id": s, "acked_at": a} for s, a in acks],
            "pending": sum(1 for _, a in acks if a is None)}


def erasure_acked(database: Database, tenant: str, store: str, erasure_id: str) -> bool:
    """The store acknowledged the erasure (the down path calls hq/down.py `erasure_document_acked` with its
    `down_ack`; this is the same by erasure id). True the first time; the member id then leaves the store's
    part of HQ's down log (`down_queue`, its erase documents)."""
    rows = database.execute("SELECT version FROM down_queue WHERE tenant = ? AND scope = ? AND kind = 'erase' AND"
                            " records LIKE ?", (tenant, store, f'%"erasure_id":{dumps(erasure_id)}%')).rows
    return any(erasure_id in down.erasure_acked(database, tenant, store, int(version)) for (version,) in rows)
