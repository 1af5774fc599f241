"""The facts of one committed sale that a receipt shows: a plain, JSON-round-trippable snapshot.

The print job keeps this snapshot (taken in the sale's transaction), so a receipt printed an hour
later, or reprinted next week, shows exactly what was true at the sale: prices, coupons, the
member's points balance at that moment. Money is integer fen; times are timezone-aware.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


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
    phone: str  # printed masked
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
        data = asdict(self)
        data["sold_at"] = self.sold_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SaleFacts":
        member = data.get("member")
        return cls(
            sale_id=str(data["sale_id"]),
            receipt_no=str(data["receipt_no"]),
            tenant=str(data["tenant"]),
            store_id=str(data["store_id"]),
            sold_at=datetime.fromisoformat(data["sold_at"]),
            total_fen=int(data["total_fen"]),
            lines=tuple(LineFacts(**line) for line in data.get("lines", ())),
            discounts=tuple(DiscountFacts(**d) for d in data.get("discounts", ())),
            payments=tuple(PaymentFacts(**p) for p in data.get("payments", ())),
            member=MemberFacts(**member) if member else None,
            cashier=str(data.get("cashier", "")),
            till=str(data.get("till", "")),
            extra=dict(data.get("extra") or {}),
        )
