"""The facts of one committed sale that a receipt shows: a plain, JSON-round-trippable snapshot.

The print job keeps this snapshot (taken in the sale's transaction), so a receipt printed an hour
later, or reprinted next week, shows exactly what was true at the sale: prices, coupons, the
member's points balance at that moment. Money is integer fen; times are timezone-aware.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from posedge.sync.encoding import dumps_bytes, loads


@dataclass(frozen=True)
class LineFacts:
    name: str
    qty: int
    unit_price_fen: int
    amount_fen: int  # qty x unit price, before line discounts
    discount_fen: int = 0  # reduction on this line (positive)
    sku: str = ""
    unit: str = "pcs"  # pcs: qty is a count; g / ml: qty is grams / millilitres

    @property
    def qty_text(self) -> str:
        return str(self.qty) if self.unit == "pcs" else f"{self.qty}{self.unit}"


@dataclass(frozen=True)
class DiscountFacts:
    """A sale-level reduction: a promotion or a redeemed coupon (positive fen)."""

    label: str
    amount_fen: int
    kind: str = "discount"  # "discount" | "coupon"
    code: str = ""  # coupon code; printed masked


@dataclass(frozen=True)
class PaymentFacts:
    method: str  # "cash" | "wechat" | "alipay" | "card" | "unionpay" | "points" | other
    amount_fen: int  # tendered
    reference: str = ""  # transaction reference; printed masked (a payment code never gets here)
    change_fen: int = 0


@dataclass(frozen=True)
class MemberFacts:
    phone: str = ""  # printed masked; "" when the store has no phone for the member (known only by code)
    points_earned: int = 0
    points_balance: int | None = None
    level: str = ""


@dataclass(frozen=True)
class SaleFacts:
    sale_id: str
    receipt_no: str
    tenant: str
    store_id: str
    sold_at: datetime
    total_fen: int
    lines: tuple[LineFacts, ...] = ()
    discounts: tuple[DiscountFacts, ...] = ()
    payments: tuple[PaymentFacts, ...] = ()
    member: MemberFacts | None = None
    cashier: str = ""
    till: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.sold_at.tzinfo is None:
            raise ValueError("sold_at must be timezone-aware")

    @property
    def subtotal_fen(self) -> int:
        return sum(line.amount_fen for line in self.lines)

    @property
    def paid_cash(self) -> bool:
        return any(p.method == "cash" for p in self.payments)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values. (orjson writes the dataclass itself the same way: sync/encoding.py.)"""
        return loads(dumps_bytes(self))

    def merged(self, fields: dict[str, Any]) -> "SaleFacts":
        """These facts with `fields` (JSON-shaped, as in to_dict) replacing the same-named ones."""
        changes: dict[str, Any] = {}
        for name, value in fields.items():
            convert = _FIELD_FROM_JSON.get(name)
            if convert is None:
                raise TypeError(f"SaleFacts has no field {name!r}")
            changes[name] = convert(value)
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SaleFacts":
        return cls(**{name: convert(data[name]) for name, convert in _FIELD_FROM_JSON.items() if name in data})


def _tuple_of(kind: type) -> Any:
    return lambda items: tuple(item if isinstance(item, kind) else kind(**item) for item in items or ())


def _member(value: Any) -> MemberFacts | None:
    if not value:
        return None
    if isinstance(value, MemberFacts):
        return value
    # The till reads these from nullable columns (members.phone_masked, till_sales.tier): None is "none".
    return MemberFacts(
        phone=str(value.get("phone") or ""),
        points_earned=int(value.get("points_earned") or 0),
        points_balance=None if value.get("points_balance") is None else int(value["points_balance"]),
        level=str(value.get("level") or ""),
    )


def _sold_at(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


# How each SaleFacts field is read back from its JSON form (or taken as is when already typed).
_FIELD_FROM_JSON: dict[str, Any] = {
    "sale_id": str,
    "receipt_no": str,
    "tenant": str,
    "store_id": str,
    "sold_at": _sold_at,
    "total_fen": int,
    "lines": _tuple_of(LineFacts),
    "discounts": _tuple_of(DiscountFacts),
    "payments": _tuple_of(PaymentFacts),
    "member": _member,
    "cashier": lambda v: str(v or ""),
    "till": lambda v: str(v or ""),
    "extra": lambda v: dict(v or {}),
}
