"""Records HQ pushes down (members, stock, coupons, pickup orders, revocations, coupon verdicts, member
erasures) and how they apply.

One apply path for the sync inbox (agent/hq_sync/inbox.py) and for `posedge data import`: each record is
validated (untrusted input), then applied inside the caller's writer transaction if its `version`
is newer than what is stored; older or equal versions are ignored, so replays and out-of-order
deliveries are harmless. A record with `deleted: true` leaves a tombstone that keeps its version.
Phones arrive as a keyed hash (HQ and stores share `[members] phone_hash_key`); an import may carry
the clear `phone` instead, which is hashed and masked here and never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Annotated, Any, Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from posedge.agent.domain.ledger import newer
from posedge.agent.errors import InvalidInput

ID = r"^[A-Za-z0-9._:-]{1,64}$"
SKU = r"^[\x21-\x7e]{1,64}$"
Version = Annotated[StrictInt, Field(ge=1, le=2**62)]
Seq = Annotated[StrictInt, Field(ge=0, le=2**62)]


class RecordInvalid(InvalidInput):
    code = "record_invalid"
    message = "an HQ record is not valid"


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Version
    deleted: StrictBool = False


class MemberRecord(Record):
    member_id: str = Field(pattern=ID)
    tier: str | None = Field(None, pattern=ID)
    card_no: str | None = Field(None, pattern=ID)
    phone_hash: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    phone: str | None = Field(None, max_length=32, description="import only: hashed and masked, never stored")
    phone_masked: str | None = Field(None, max_length=32)
    consent: StrictBool = False
    points: StrictInt = Field(0, ge=-(2**40), le=2**40, description="HQ's balance at this version")
    points_through: Seq = Field(0, description="this store's points entries up to this seq are in `points`")


class StockRecord(Record):
    sku: str = Field(pattern=SKU)
    qty: StrictInt = Field(ge=-(2**40), le=2**40)
    through_seq: Seq = 0


class PickupItem(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    sku: str = Field(pattern=SKU)
    name: str | None = Field(None, max_length=128)
    qty: StrictInt = Field(gt=0, le=100_000_000)


class PickupRecord(Record):
    order_id: str = Field(pattern=ID)
    store_id: str | None = Field(None, pattern=ID, description="when present, must be this store")
    state: str = Field("ready", pattern=r"^[a-z_]{1,32}$")
    items: list[PickupItem] = Field(default_factory=list, max_length=500)
    phone_masked: str | None = Field(None, max_length=32)
    member_id: str | None = Field(None, pattern=ID)


class RevocationRecord(Record):
    scope: Literal["campaign", "coupon"]
    ref: str = Field(pattern=ID)
    revoked: StrictBool = True
    reason: str | None = Field(None, max_length=200)


class VerdictRecord(Record):
    coupon_id: str = Field(pattern=ID)
    verdict: Literal["double_redemption", "confirmed"]
    other_store: str | None = Field(None, pattern=ID)
    detail: str | None = Field(None, max_length=200)


class CouponRecord(Record):
    """A coupon HQ issued, with its status at HQ: `revoked` or `redeemed` (elsewhere) makes the till refuse it."""

    coupon_id: str = Field(pattern=ID)
    status: Literal["issued", "revoked", "redeemed"]
    campaign: str | None = Field(None, pattern=ID)
    store_id: str | None = Field(None, pattern=ID, description="where HQ saw it redeemed")
    reason: str | None = Field(None, max_length=200)


class EraseRecord(Record):
    """A member erasure (a privacy request at HQ): the member's data goes, their sales stay under a pseudonym."""

    member_id: str = Field(pattern=ID)


class PhoneHasher:
    """HMAC-SHA256 of the normalised phone (digits only, a leading 86 country code dropped)."""

    def __init__(self, key: str | None) -> None:
        self._key = key.encode() if key else None

    @property
    def enabled(self) -> bool:
        return self._key is not None

    def hash(self, phone: str) -> str | None:
        digits = normalise_phone(phone)
        if self._key is None or digits is None:
            return None
        return hmac.new(self._key, digits.encode(), hashlib.sha256).hexdigest()


def normalise_phone(phone: str) -> str | None:
    digits = re.sub(r"[\s()+-]", "", phone or "")
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    return digits if digits.isdigit() and 5 <= len(digits) <= 15 else None


def mask_phone(phone: str) -> str:
    digits = normalise_phone(phone) or ""
    return digits[:3] + "****" + digits[-4:] if len(digits) >= 8 else "****"


# -- apply -------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _stored_version(conn: sqlite3.Connection, table: str, key: str, value: str) -> int | None:
    row = conn.execute(f"SELECT version FROM {table} WHERE {key} = ?", (value,)).fetchone()
    return row[0] if row else None


def apply_member(conn: sqlite3.Connection, rec: MemberRecord, hasher: PhoneHasher) -> bool:
    if not newer(rec.version, _stored_version(conn, "members", "member_id", rec.member_id)):
        return False
    erased = _stored_version(conn, "erased_members", "pseudonym", erased_pseudonym(conn, rec.member_id))
    if not newer(rec.version, erased):  # a replay of what the store had before the erasure
        return False
    phone_hash, masked, card_no, consent = rec.phone_hash, rec.phone_masked, rec.card_no, rec.consent
    if rec.phone is not None:
        phone_hash = phone_hash or hasher.hash(rec.phone)
        masked = masked or mask_phone(rec.phone)
    given = rec.model_fields_set
    held = conn.execute("SELECT phone_hash, phone_masked, card_no, consent FROM members WHERE member_id = ?",
                        (rec.member_id,)).fetchone()
    if held is not None and not rec.deleted:  # a field left out keeps what the store has (HQ's tier pushes)
        if not given & {"phone_hash", "phone"}:
            phone_hash = held[0]
        if not given & {"phone_masked", "phone"}:
            masked = held[1]
        if "card_no" not in given:
            card_no = held[2]
        if "consent" not in given:
            consent = bool(held[3])
    if card_no is not None:  # a card moved to another member: the newer record takes it
        conn.execute("UPDATE members SET card_no = NULL WHERE card_no = ? AND member_id != ?",
                     (card_no, rec.member_id))
    conn.execute(
        "INSERT INTO members (member_id, version, tier, card_no, phone_hash, phone_masked, consent, points_base,"
        " points_through, deleted, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        " ON CONFLICT (member_id) DO UPDATE SET version=excluded.version, tier=excluded.tier, card_no=excluded.card_no,"
        " phone_hash=excluded.phone_hash, phone_masked=excluded.phone_masked, consent=excluded.consent,"
        " points_base=excluded.points_base, points_through=excluded.points_through, deleted=excluded.deleted,"
        " updated_at=excluded.updated_at",
        (rec.member_id, rec.version, rec.tier, card_no, phone_hash, masked, int(consent), rec.points,
         rec.points_through, int(rec.deleted), _now()))
    return True


def apply_stock(conn: sqlite3.Connection, rec: StockRecord) -> bool:
    if not newer(rec.version, _stored_version(conn, "stock", "sku", rec.sku)):
        return False
    conn.execute(
        "INSERT INTO stock (sku, version, qty, through_seq, updated_at) VALUES (?,?,?,?,?) ON CONFLICT (sku) DO UPDATE"
        " SET version=excluded.version, qty=excluded.qty, through_seq=excluded.through_seq,"
        " updated_at=excluded.updated_at",
        (rec.sku, rec.version, 0 if rec.deleted else rec.qty, rec.through_seq, _now()))
    return True


def apply_pickup(conn: sqlite3.Connection, rec: PickupRecord, store_id: str) -> bool:
    if rec.store_id is not None and rec.store_id != store_id:
        raise RecordInvalid(f"pickup order {rec.order_id} is for store {rec.store_id}, not {store_id}")
    if not newer(rec.version, _stored_version(conn, "pickups", "order_id", rec.order_id)):
        return False
    items = json.dumps([i.model_dump(exclude_none=True) for i in rec.items], ensure_ascii=False)
    conn.execute(
        "INSERT INTO pickups (order_id, version, state, items, phone_masked, member_id, deleted, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (order_id) DO UPDATE SET version=excluded.version, state=excluded.state,"
        " items=excluded.items, phone_masked=excluded.phone_masked, member_id=excluded.member_id,"
        " deleted=excluded.deleted, updated_at=excluded.updated_at",
        (rec.order_id, rec.version, rec.state, items, rec.phone_masked, rec.member_id, int(rec.deleted), _now()))
    return True


def apply_revocation(conn: sqlite3.Connection, rec: RevocationRecord) -> bool:
    row = conn.execute("SELECT version FROM revocations WHERE scope = ? AND ref = ?", (rec.scope, rec.ref)).fetchone()
    if not newer(rec.version, row[0] if row else None):
        return False
    conn.execute(
        "INSERT INTO revocations (scope, ref, version, revoked, reason, updated_at) VALUES (?,?,?,?,?,?)"
        " ON CONFLICT (scope, ref) DO UPDATE SET version=excluded.version, revoked=excluded.revoked,"
        " reason=excluded.reason, updated_at=excluded.updated_at",
        (rec.scope, rec.ref, rec.version, int(rec.revoked and not rec.deleted), rec.reason, _now()))
    return True


def apply_verdict(conn: sqlite3.Connection, rec: VerdictRecord) -> bool:
    if not newer(rec.version, _stored_version(conn, "coupon_verdicts", "coupon_id", rec.coupon_id)):
        return False
    conn.execute(
        "INSERT INTO coupon_verdicts (coupon_id, verdict, other_store, detail, version, received_at)"
        " VALUES (?,?,?,?,?,?)"
        " ON CONFLICT (coupon_id) DO UPDATE SET verdict=excluded.verdict, other_store=excluded.other_store,"
        " detail=excluded.detail, version=excluded.version, received_at=excluded.received_at, seen=0",
        (rec.coupon_id, rec.verdict, rec.other_store, rec.detail, rec.version, _now()))
    return True


def apply_coupon(conn: sqlite3.Connection, rec: CouponRecord) -> bool:
    if not newer(rec.version, _stored_version(conn, "hq_coupons", "coupon_id", rec.coupon_id)):
        return False
    conn.execute(
        "INSERT INTO hq_coupons (coupon_id, version, status, campaign, redeemed_at_store, reason, deleted, updated_at)"
        " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (coupon_id) DO UPDATE SET version=excluded.version,"
        " status=excluded.status, campaign=excluded.campaign, redeemed_at_store=excluded.redeemed_at_store,"
        " reason=excluded.reason, deleted=excluded.deleted, updated_at=excluded.updated_at",
        (rec.coupon_id, rec.version, rec.status, rec.campaign, rec.store_id, rec.reason, int(rec.deleted), _now()))
    return True


def erased_pseudonym(conn: sqlite3.Connection, member_id: str) -> str:
    """What an erased member's rows say instead of their id: stable in this database, not the id itself."""
    salt = conn.execute("SELECT salt FROM erasure_salt WHERE id = 1").fetchone()[0]
    return "erased-" + hashlib.sha256(f"{salt}:{member_id}".encode()).hexdigest()[:24]


# Tables whose member_id column names the member; their rows stay (the books), the id is replaced.
MEMBER_ID_COLUMNS = ("sales", "till_sales", "points_entries", "coupon_redemptions", "pickups")
# JSON text columns that may quote the member id (and their masked phone) anywhere inside.
MEMBER_JSON_COLUMNS = (("outbox", "payload"), ("sales", "response"), ("refunds", "response"),
                       ("print_jobs", "facts"))


def apply_erase(conn: sqlite3.Connection, rec: EraseRecord) -> bool:
    """Delete the member's record, phone hash and masked phone; keep their sales with the id replaced.

    JSON columns (the outbox's payloads, acked or not, the stored answers, print jobs) have the quoted id
    replaced by the pseudonym and the masked phone by "": events still unsent reach HQ under the pseudonym."""
    pseudonym = erased_pseudonym(conn, rec.member_id)
    row = conn.execute("SELECT version, phone_masked FROM members WHERE member_id = ?", (rec.member_id,)).fetchone()
    tombstone = _stored_version(conn, "erased_members", "pseudonym", pseudonym)
    if tombstone is not None and row is None and tombstone >= rec.version:
        return False  # erased already, and nothing came back since
    version = max(rec.version, row[0] if row else 0, tombstone or 0)
    conn.execute("INSERT INTO erased_members (pseudonym, version, erased_at) VALUES (?,?,?) ON CONFLICT (pseudonym)"
                 " DO UPDATE SET version = excluded.version, erased_at = excluded.erased_at",
                 (pseudonym, version, _now()))
    conn.execute("DELETE FROM members WHERE member_id = ?", (rec.member_id,))
    for table in MEMBER_ID_COLUMNS:
        conn.execute(f"UPDATE {table} SET member_id = ? WHERE member_id = ?", (pseudonym, rec.member_id))
    conn.execute("UPDATE pickups SET phone_masked = NULL WHERE member_id = ?", (pseudonym,))
    conn.execute("UPDATE outbox SET key = ? WHERE key = ?", (pseudonym, rec.member_id))
    replacements = [(json.dumps(rec.member_id), json.dumps(pseudonym))]
    if row is not None and row[1]:
        replacements.append((json.dumps(row[1]), '""'))
    for table, column in MEMBER_JSON_COLUMNS:
        for old, new in replacements:
            conn.execute(f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?) > 0",
                         (old, new, old))
    return True


def record_hq_contact(conn: sqlite3.Connection, source: str = "link", at: datetime | None = None) -> None:
    """Called by the sync link on every message from HQ, and by an import (HQ's data, by hand)."""
    stamp = (at or datetime.now(timezone.utc)).isoformat(timespec="milliseconds")
    conn.execute("INSERT INTO hq_contact (id, last_contact_at, source) VALUES (1, ?, ?) ON CONFLICT (id) DO UPDATE"
                 " SET last_contact_at = excluded.last_contact_at, source = excluded.source", (stamp, source))


def last_hq_contact(conn: sqlite3.Connection) -> datetime | None:
    row = conn.execute("SELECT last_contact_at FROM hq_contact WHERE id = 1").fetchone()
    return datetime.fromisoformat(row[0]) if row else None


# -- the kinds, by name (import and inbox) -------------------------------------------------------


KINDS: dict[str, type[Record]] = {"members": MemberRecord, "stock": StockRecord, "pickups": PickupRecord,
                                  "revocations": RevocationRecord, "verdicts": VerdictRecord,
                                  "coupons": CouponRecord, "erase": EraseRecord}


def parse_record(kind: str, data: Any) -> Record:
    model = KINDS[kind]
    if not isinstance(data, dict):
        raise RecordInvalid(f"a {kind} record is a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise RecordInvalid(f"{where}: {first['msg']}", errors=len(exc.errors())) from None


def applier(kind: str, hasher: PhoneHasher, store_id: str) -> Callable[[sqlite3.Connection, Any], bool]:
    """The apply function for one kind: (conn, record) -> applied (False: an older version, ignored)."""
    return {
        "members": lambda conn, rec: apply_member(conn, rec, hasher),
        "stock": apply_stock,
        "pickups": lambda conn, rec: apply_pickup(conn, rec, store_id),
        "revocations": apply_revocation,
        "verdicts": apply_verdict,
        "coupons": apply_coupon,
        "erase": apply_erase,
    }[kind]



# -- JSON lines (posedge data import) ----------------------------------------------------------------


@dataclass
class ImportReport:
    applied: int = 0
    ignored: int = 0  # an equal or newer version was already there
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, problem)

    def as_dict(self) -> dict[str, Any]:
        return {"applied": self.applied, "ignored_older": self.ignored,
                "invalid": [{"line": n, "problem": p} for n, p in self.invalid]}


def parse_lines(kind: str, lines: Iterable[str], report: ImportReport) -> list[tuple[int, Record]]:
    """Validate every line; a bad line is reported with its number and skipped, the rest go on."""
    out = []
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            out.append((number, parse_record(kind, json.loads(text))))
        except (ValueError, RecordInvalid) as exc:
            problem = exc.message if isinstance(exc, RecordInvalid) else f"not JSON: {exc}"
            report.invalid.append((number, problem))
    return out


def apply_batch(conn: sqlite3.Connection, kind: str, records: list[tuple[int, Record]], hasher: PhoneHasher,
                store_id: str, report: ImportReport) -> list[Record]:
    """Apply in the caller's transaction; returns the records that were applied (newer versions)."""
    apply = applier(kind, hasher, store_id)
    applied = []
    for number, record in records:
        try:
            if apply(conn, record):
                report.applied += 1
                applied.append(record)
            else:
                report.ignored += 1
        except RecordInvalid as exc:
            report.invalid.append((number, exc.message))
    return applied
