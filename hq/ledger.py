"""What the stores' events say, projected into the chain's tables as each event is applied (once).

Called from hq/db.py inside the batch's transaction, the first time an event id is applied, so a
resent or duplicated event never counts twice. Payloads are untrusted: a field of the wrong type is
skipped (the raw event stays in `events`), never an exception that would roll the batch back and
have it resent for ever.

- `points` (agent/till/members.py): one `points_ledger` row per entry (`entry_id`, `delta`, `reason`);
- `sale` with a `member_id`: spend (`total_fen`) in `member_spend`; `refund` of one: minus `refund_fen`;
  a refund of a sale with a pending claim: `claim_points_reversed` in `claim_reversals`;
- `stock_movements` of `sale`, `refund` and `pickup_collected`: `stock_levels` (on hand, `as_of` the
  latest movement's event time);
- `pickup_collected`: the pickup's `collected_at`;
- `store_key`: the store's public claim key (`jwk.kid`, `jwk.x`) in `store_keys`;
- any event naming a member: `member_stores`, the stores that hold the member (tier changes and
  erasures go to them).

`forget_member` is the erasure's side of these tables (docs/hq-api.md): the books stay under a pseudonym.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from posedge.sync.encoding import dumps
from posedge.sync.protocol import WireEvent

if TYPE_CHECKING:
    from posedge.hq.db import Database

MEMBER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # the agent's ID pattern (agent/till/hq_records.py)
REF = re.compile(r"^[\x21-\x7e]{1,128}$")
B64URL_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # a raw Ed25519 public key, base64url without padding
FEN_LIMIT = 2**53


def project(database: Database, tenant: str, store: str, event: WireEvent) -> None:
    payload = event.payload
    member = _member(payload.get("member_id"))
    if member is not None:
        _member_seen(database, tenant, member, store, event.created_at)
    if event.kind == "points" and member is not None:
        _points(database, tenant, store, member, payload, event.created_at)
    elif event.kind == "sale":
        total = _fen(payload.get("total_fen"))
        sale_id = _ref(payload.get("sale_id"))
        if member is not None and total is not None and sale_id is not None:
            _spend(database, tenant, "store_sale", f"{store}/{sale_id}", member, store, total, event.created_at)
    elif event.kind == "refund":
        _refund(database, tenant, store, member, payload, event.created_at)
    elif event.kind == "pickup_collected":
        order_id, at = _ref(payload.get("order_id")), payload.get("collected_at")
        if order_id is not None and isinstance(at, str) and len(at) <= 64:
            database.execute("UPDATE pickups SET collected_at = ? WHERE tenant = ? AND order_id = ? AND store_id = ?"
                             " AND collected_at IS NULL", (at, tenant, order_id, store))
    elif event.kind == "store_key":
        _store_key(database, tenant, store, payload.get("jwk"), event.created_at)
    if event.kind in ("sale", "refund", "pickup_collected"):
        _stock(database, tenant, store, payload.get("stock_movements"), event.created_at)


def _member(value: Any) -> str | None:
    return value if isinstance(value, str) and MEMBER_ID.match(value) else None


def _ref(value: Any) -> str | None:
    return value if isinstance(value, str) and REF.match(value) else None


def _fen(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and -FEN_LIMIT < value < FEN_LIMIT
    return value if ok else None


def _member_seen(database: Database, tenant: str, member: str, store: str, at: str) -> None:
    database.execute("INSERT INTO member_stores VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, member, store, at))


def _points(database: Database, tenant: str, store: str, member: str, payload: dict[str, Any], at: str) -> None:
    entry, delta = _ref(payload.get("entry_id")), _fen(payload.get("delta"))
    reason = payload.get("reason") if isinstance(payload.get("reason"), str) else "store"
    if entry is None or delta is None:
        return
    seq = _fen(payload.get("seq"))  # the store's own points_entries seq: a pushed balance says what it includes
    database.execute("INSERT INTO points_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, entry, member, store, seq, delta, str(reason)[:32], _ref(payload.get("sale_id")), at))


def _spend(database: Database, tenant: str, source: str, ref: str, member: str, store: str | None, amount: int,
           at: str) -> None:
    database.execute("INSERT INTO member_spend VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                     (tenant, source, ref, member, store, amount, at))


def _refund(database: Database, tenant: str, store: str, member: str | None, payload: dict[str, Any],
            at: str) -> None:
    refund_id, sale_id = _ref(payload.get("refund_id")), _ref(payload.get("sale_id"))
    if refund_id is None or sale_id is None:
        return
    amount = _fen(payload.get("refund_fen"))
    if member is not None and amount is not None:
        _spend(database, tenant, "store_refund", f"{store}/{refund_id}", member, store, -amount, at)
    reversed_points = _fen(payload.get("claim_points_reversed"))
    if reversed_points:
        database.execute("INSERT INTO claim_reversals VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (tenant, store, sale_id, refund_id, reversed_points))


def _stock(database: Database, tenant: str, store: str, movements: Any, at: str) -> None:
    if not isinstance(movements, list):
        return
    for movement in movements[:10_000]:
        if not isinstance(movement, dict):
            continue
        sku, delta = movement.get("sku"), _fen(movement.get("delta"))
        if not isinstance(sku, str) or not 0 < len(sku) <= 64 or delta is None:
            continue
        database.execute(
            "INSERT INTO stock_levels VALUES (?, ?, ?, ?, ?) ON CONFLICT (tenant, store_id, sku) DO UPDATE SET"
            " on_hand = stock_levels.on_hand + excluded.on_hand,"
            " as_of = CASE WHEN excluded.as_of > stock_levels.as_of THEN excluded.as_of ELSE stock_levels.as_of END",
            (tenant, store, sku, delta, at))


def _store_key(database: Database, tenant: str, store: str, jwk: Any, at: str) -> None:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519":
        return
    kid, x = jwk.get("kid"), jwk.get("x")
    if isinstance(kid, str) and 0 < len(kid) <= 64 and isinstance(x, str) and B64URL_KEY.match(x):
        database.execute("INSERT INTO store_keys VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (tenant, store, kid, x, at))


# -- erasure (PIPL): keep the books, forget the member --------------------------------------------------------

# Tables whose rows are the books: they stay with the member id replaced by the erasure's pseudonym.
BOOK_TABLES = ("points_ledger", "member_spend", "online_orders", "coupons", "claims", "pickups")
ERASED_HASH = "erased"


def forget_member(database: Database, tenant: str, member_id: str, pseudonym: str) -> None:
    """In the caller's transaction: the member row and the stores that hold them are deleted; the books keep
    their amounts under `pseudonym`; pickups lose their masked phone; the idempotency hashes of orders and
    pickups (which covered the member) become `erased`, so a retry of such a body is a conflict from then on;
    raw events have the quoted member id replaced wherever it is (and in the key of points events) and the
    member's masked phones blanked. Run at the erasure, and again when each store acknowledges it, for what
    that store sent meanwhile (events already on their way when it erased the member)."""
    phones = [str(r[0]) for r in database.execute("SELECT DISTINCT phone_masked FROM pickups WHERE tenant = ? AND"
                                                  " member_id = ? AND phone_masked IS NOT NULL",
                                                  (tenant, member_id)).rows]
    for table in ("members", "member_stores"):
        database.execute(f"DELETE FROM {table} WHERE tenant = ? AND member_id = ?", (tenant, member_id))
    for table in BOOK_TABLES:
        database.execute(f"UPDATE {table} SET member_id = ? WHERE tenant = ? AND member_id = ?",
                         (pseudonym, tenant, member_id))
    for table in ("online_orders", "pickups"):
        database.execute(f"UPDATE {table} SET body_sha256 = ? WHERE tenant = ? AND member_id = ? AND body_sha256 != ?",
                         (ERASED_HASH, tenant, pseudonym, ERASED_HASH))
    database.execute("UPDATE pickups SET phone_masked = NULL WHERE tenant = ? AND member_id = ?", (tenant, pseudonym))
    quoted = dumps(member_id)
    database.execute("UPDATE events SET payload = replace(payload, ?, ?), key = CASE WHEN key = ? THEN ? ELSE key"
                     " END WHERE tenant = ? AND (payload LIKE ? OR key = ?)",
                     (quoted, dumps(pseudonym), member_id, pseudonym, tenant, f"%{quoted}%", member_id))
    for phone in phones:
        quoted_phone = dumps(phone)
        database.execute("UPDATE events SET payload = replace(payload, ?, ?) WHERE tenant = ? AND payload LIKE ?",
                         (quoted_phone, '""', tenant, f"%{quoted_phone}%"))
