"""What a sale is, as the POS sends it, and the arithmetic that must hold before it is recorded.

Pure: no I/O. Money is integer fen (StrictInt: a JSON float or a string is refused, not rounded).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StrictInt, field_validator, model_validator

from posedge.agent.domain.money import per_mille_amount

SALE_ID = r"^[A-Za-z0-9._:-]{1,64}$"
SKU = r"^[\x21-\x7e]{1,64}$"
METHOD = r"^[a-z][a-z0-9_]{0,31}$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

Fen = Annotated[StrictInt, Field(ge=0, le=10**10)]
PositiveFen = Annotated[StrictInt, Field(gt=0, le=10**10)]


class InputModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _printable(value: str | None) -> str | None:
    if value is not None and _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


class SaleLineIn(InputModel):
    sku: str = Field(pattern=SKU, description="product code, 1-64 printable ASCII characters")
    name: str | None = Field(None, max_length=128, description="product name for the receipt")
    qty: StrictInt = Field(gt=0, le=100_000_000, description="count (unit pcs) or grams / millilitres (unit g / ml)")
    unit: Literal["pcs", "g", "ml"] = Field(
        "pcs", description="pcs: qty is a count; g / ml: qty is grams / millilitres"
    )
    unit_price_fen: Fen = Field(description="price per piece; per kilogram for g; per litre for ml")
    discount_fen: Fen = Field(0, description="discount on this line")

    _name = field_validator("name")(classmethod(lambda cls, v: _printable(v)))

    @property
    def gross_fen(self) -> int:
        if self.unit == "pcs":
            return self.qty * self.unit_price_fen
        return per_mille_amount(self.qty, self.unit_price_fen)

    @property
    def amount_fen(self) -> int:
        return self.gross_fen - self.discount_fen

    @model_validator(mode="after")
    def _discount_within_line(self) -> "SaleLineIn":
        if self.discount_fen > self.gross_fen:
            raise ValueError(f"discount_fen {self.discount_fen} is more than the line's amount {self.gross_fen}")
        return self


class PaymentIn(InputModel):
    method: str = Field(pattern=METHOD, description="cash, wechat, alipay, unionpay, card, voucher, other...")
    amount_fen: PositiveFen
    reference: str | None = Field(None, max_length=64, description="payment reference; stored masked")

    _reference = field_validator("reference")(classmethod(lambda cls, v: _printable(v)))


class CouponOverrideIn(InputModel):
    """A manager accepting coupons past the offline limits ([coupons.offline] beyond = "override")."""

    manager: str = Field(min_length=1, max_length=64, description="who accepts (manager id or name)")
    reason: str = Field(min_length=1, max_length=200, description="why")

    _text = field_validator("manager", "reason")(classmethod(lambda cls, v: _printable(v)))


Code = Annotated[str, Field(min_length=1, max_length=2048)]


class SaleIn(InputModel):
    sale_id: str | None = Field(None, pattern=SALE_ID, description="POS's id for the sale; a UUIDv7 if absent")
    lines: list[SaleLineIn] = Field(min_length=1, max_length=500)
    payments: list[PaymentIn] = Field(max_length=20, description="empty only when the total is 0 (coupons, points)")
    member_id: str | None = Field(None, pattern=SALE_ID)
    till: str | None = Field(None, pattern=SALE_ID, description="the till (POS terminal) id")
    cashier: str | None = Field(None, max_length=64)
    occurred_at: AwareDatetime | None = Field(None, description="when the sale happened, with time zone")
    # The till loop (agent/till/): who, which coupons, how many points; their discounts are in the totals.
    member_code: Code | None = Field(None, description="member code as scanned (signed by HQ)")
    coupons: list[Code] = Field(default_factory=list, max_length=20, description="coupon codes as scanned")
    points_redeemed: StrictInt = Field(0, ge=0, le=10**9, description="points the member spends on this sale")
    coupon_override: CouponOverrideIn | None = Field(None, description="manager override of the offline coupon limits")

    _cashier = field_validator("cashier")(classmethod(lambda cls, v: _printable(v)))

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _time_as_text(cls, value: object) -> object:
        # pydantic would read a number as Unix time; the API (and its OpenAPI) say ISO 8601 text.
        if value is not None and not isinstance(value, (str, datetime)):
            raise ValueError("expected an ISO 8601 time with a time zone offset, as text")
        return value

    def body_sha256(self) -> str:
        """Hash of the canonical body, to tell an identical retry from a conflicting reuse of the id."""
        body = self.model_dump(mode="json", exclude={"sale_id"})
        canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SaleTotals:
    gross_fen: int
    discount_fen: int
    total_fen: int
    paid_fen: int


class TotalsMismatch(ValueError):
    def __init__(self, expected_fen: int, found_fen: int) -> None:
        self.expected_fen, self.found_fen = expected_fen, found_fen
        super().__init__(
            f"payments add up to {found_fen} fen but the lines minus discounts come to {expected_fen} fen"
        )


def sale_totals(sale: SaleIn, extra_discount_fen: int = 0) -> SaleTotals:
    """Totals of a sale; payments must equal lines minus discounts exactly (extra: coupons, points)."""
    gross = sum(line.gross_fen for line in sale.lines)
    discount = sum(line.discount_fen for line in sale.lines) + extra_discount_fen
    total = gross - discount
    paid = sum(p.amount_fen for p in sale.payments)
    if paid != total:
        raise TotalsMismatch(total, paid)
    return SaleTotals(gross, discount, total, paid)


# A whole digit run shaped like a WeChat Pay or Alipay code, anywhere (scanner noise may surround it).
_PAYMENT_CODE = re.compile(r"(?<!\d)(1[0-5]\d{16}|(2[5-9]|30)\d{14,22})(?!\d)")


def mask_reference(reference: str | None) -> str | None:
    """Keep the last 4 characters. A customer payment code pasted by mistake is masked whole."""
    if reference is None:
        return None
    if _PAYMENT_CODE.search(reference) or len(reference) <= 4:
        return "*" * min(len(reference), 8)
    return "*" * (len(reference) - 4) + reference[-4:]


def occurred_or(sale: SaleIn, now: datetime) -> datetime:
    return sale.occurred_at or now
