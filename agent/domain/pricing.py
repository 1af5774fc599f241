"""Pricing at the till: coupons, points spent and points earned on a basket. Pure, integer fen.

`price()` is the one function behind both `POST /v1/quote` and `POST /v1/sales`, so a quote and the
sale made from it always agree. It takes coupons that already passed signature, time, store and
ledger checks (agent/till/feature.py); here they can still be refused for basket reasons:
  not_stackable     more coupons than `[coupons] max_per_sale`, or a second one of a campaign
  min_spend_not_met the basket after line discounts and earlier coupons is below the coupon's `min`
  gift_not_in_basket a gift coupon whose SKU is not on a line (the POS adds the gift line at its price)
  no_benefit        the coupon would take nothing off (the basket, or every line of the gift SKU, is at zero)
Order: line discounts (from the POS) -> coupons in the order scanned -> points -> earning.
Every discount is spread over the lines by largest remainder, so line figures add up exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from posedge.agent.till.codes import CouponCode


@dataclass(frozen=True)
class Line:
    sku: str
    gross_fen: int  # the line before any discount (qty x price, or by weight)
    discount_fen: int = 0  # line discount the POS already gave (price override, promotion)
    piece_fen: int | None = None  # price of one piece, what a gift coupon takes off; None: the whole line

    @property
    def net_fen(self) -> int:
        return self.gross_fen - self.discount_fen


@dataclass(frozen=True)
class StackingRules:
    max_per_sale: int = 1
    same_campaign: bool = False  # may two coupons of one campaign go on one sale


@dataclass(frozen=True)
class PointsRules:
    earn_per_yuan: int = 1  # points per yuan paid, default tier
    tier_earn_per_yuan: dict[str, int] = field(default_factory=dict)
    excluded_skus: frozenset[str] = frozenset()
    redeem_unit_points: int = 100  # points are spent in steps of this many...
    redeem_unit_fen: int = 100  # ...each worth this many fen
    redeem_max_percent: int = 100  # of the total after coupons

    def earn_rate(self, tier: str | None) -> int:
        return self.tier_earn_per_yuan.get(tier, self.earn_per_yuan) if tier else self.earn_per_yuan

    def points_value_fen(self, points: int) -> int:
        return points // self.redeem_unit_points * self.redeem_unit_fen


@dataclass(frozen=True)
class PricedLine:
    sku: str
    gross_fen: int
    line_discount_fen: int
    coupon_discount_fen: int
    points_discount_fen: int

    @property
    def net_fen(self) -> int:
        return self.gross_fen - self.line_discount_fen - self.coupon_discount_fen - self.points_discount_fen

    def as_dict(self) -> dict[str, int | str]:
        return {"sku": self.sku, "gross_fen": self.gross_fen, "line_discount_fen": self.line_discount_fen,
                "coupon_discount_fen": self.coupon_discount_fen, "points_discount_fen": self.points_discount_fen,
                "net_fen": self.net_fen}


@dataclass(frozen=True)
class CouponOutcome:
    coupon: CouponCode
    discount_fen: int = 0
    reason: str | None = None  # None: applied

    @property
    def applied(self) -> bool:
        return self.reason is None

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"coupon_id": self.coupon.jti, "campaign": self.coupon.cmp,
                                  "benefit": self.coupon.benefit, "applied": self.applied,
                                  "discount_fen": self.discount_fen}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass(frozen=True)
class Priced:
    lines: tuple[PricedLine, ...]
    coupons: tuple[CouponOutcome, ...]
    points_redeemed: int
    points_reason: str | None  # why the points asked for cannot be spent; None: fine
    points_earned: int  # for the member, or what a claim code is worth when there is none

    @property
    def subtotal_fen(self) -> int:
        return sum(line.gross_fen - line.line_discount_fen for line in self.lines)

    @property
    def coupon_discount_fen(self) -> int:
        return sum(c.discount_fen for c in self.coupons)

    @property
    def points_discount_fen(self) -> int:
        return sum(line.points_discount_fen for line in self.lines)

    @property
    def line_discount_fen(self) -> int:
        return sum(line.line_discount_fen for line in self.lines)

    @property
    def till_discount_fen(self) -> int:
        """What coupons and points took off, on top of the POS's own line discounts."""
        return self.coupon_discount_fen + self.points_discount_fen

    @property
    def discount_fen(self) -> int:
        """Every discount: lines, coupons, points (what a sale's discount_fen says)."""
        return self.line_discount_fen + self.till_discount_fen

    @property
    def gross_fen(self) -> int:
        return sum(line.gross_fen for line in self.lines)

    @property
    def total_fen(self) -> int:
        return sum(line.net_fen for line in self.lines)

    @property
    def refusals(self) -> list[CouponOutcome]:
        return [c for c in self.coupons if not c.applied]


class PricingError(ValueError):
    """The basket itself is impossible (negative price, discount above the line). The caller's 422."""


def spread(amount: int, weights: Sequence[int]) -> list[int]:
    """Split `amount` over `weights` in proportion, by largest remainder; never above a weight."""
    basis = sum(weights)
    if amount <= 0 or basis <= 0:
        return [0] * len(weights)
    amount = min(amount, basis)
    shares = [amount * w // basis for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(amount * weights[i] % basis), i))
    for i in remainders[: amount - sum(shares)]:
        shares[i] += 1
    return shares


def _check(lines: Sequence[Line]) -> None:
    for index, line in enumerate(lines):
        if line.gross_fen < 0 or not 0 <= line.discount_fen <= line.gross_fen:
            raise PricingError(f"line {index}: the amount must not be negative, the discount between 0 and the amount")


def price(lines: Sequence[Line], coupons: Iterable[CouponCode] = (), stacking: StackingRules = StackingRules(),
          points: PointsRules = PointsRules(), tier: str | None = None, points_redeemed: int = 0,
          points_available: int | None = None) -> Priced:
    """Apply coupons (in order), then points, then compute what is earned. Never a negative total."""
    _check(lines)
    nets = [line.net_fen for line in lines]
    coupon_cuts = [0] * len(lines)
    outcomes: list[CouponOutcome] = []
    for coupon in coupons:
        outcome, cuts = _apply_coupon(coupon, lines, nets, outcomes, stacking)
        outcomes.append(outcome)
        for i, cut in enumerate(cuts):
            nets[i] -= cut
            coupon_cuts[i] += cut
    points_reason = _points_reason(points_redeemed, points_available, sum(nets), points)
    spent = points.points_value_fen(points_redeemed) if points_reason is None else 0
    points_cuts = spread(spent, nets)
    priced = tuple(PricedLine(l.sku, l.gross_fen, l.discount_fen, coupon_cuts[i], points_cuts[i])
                   for i, l in enumerate(lines))
    earned = earn_points(priced, points, tier)
    return Priced(priced, tuple(outcomes), points_redeemed if points_reason is None else 0, points_reason, earned)


def _apply_coupon(coupon: CouponCode, lines: Sequence[Line], nets: list[int], applied: list[CouponOutcome],
                  stacking: StackingRules) -> tuple[CouponOutcome, list[int]]:
    none = [0] * len(lines)
    taken = [o for o in applied if o.applied]
    if len(taken) >= stacking.max_per_sale or any(o.coupon.jti == coupon.jti for o in taken):
        return CouponOutcome(coupon, reason="not_stackable"), none
    if not stacking.same_campaign and any(o.coupon.cmp == coupon.cmp for o in taken):
        return CouponOutcome(coupon, reason="not_stackable"), none
    basis = sum(nets)
    if basis < coupon.min:
        return CouponOutcome(coupon, reason="min_spend_not_met"), none
    if coupon.gift is not None:
        cuts = _gift_cut(coupon.gift, lines, nets)
        if cuts is None:
            return CouponOutcome(coupon, reason="gift_not_in_basket"), none
    else:
        amount = _amount_off(coupon, basis)
        if coupon.cap is not None:
            amount = min(amount, coupon.cap)
        cuts = spread(amount, nets)
    if sum(cuts) == 0:
        return CouponOutcome(coupon, reason="no_benefit"), none
    return CouponOutcome(coupon, sum(cuts)), cuts


def _amount_off(coupon: CouponCode, basis: int) -> int:
    """Money off for an `off` or `pct` coupon; the code parser lets exactly one benefit through."""
    if coupon.off is not None:
        return coupon.off
    if coupon.pct is None:
        raise ValueError(f"coupon {coupon.jti!r} carries neither 'off', 'pct' nor 'gift'")
    return basis * coupon.pct // 100


def _gift_cut(sku: str, lines: Sequence[Line], nets: list[int]) -> list[int] | None:
    """One unit of the gift SKU free: the first line of it with something left to pay gives up one
    unit's price (or what is left of it; a weighed line all of it). None: the SKU is on no line.

    A line already at zero (a POS discount or an earlier coupon took it all) is passed over, so a
    payable piece further down the basket still gets the gift; if every line of the SKU is at zero
    the cut is all zeros and the caller answers no_benefit.
    """
    on_lines = [i for i, line in enumerate(lines) if line.sku == sku]
    if not on_lines:
        return None
    cuts = [0] * len(lines)
    payable = next((i for i in on_lines if nets[i] > 0), None)
    if payable is not None:
        line = lines[payable]
        cuts[payable] = nets[payable] if line.piece_fen is None else min(line.piece_fen, nets[payable])
    return cuts


def _points_reason(asked: int, available: int | None, basis: int, rules: PointsRules) -> str | None:
    if asked == 0:
        return None
    if asked < 0 or asked % rules.redeem_unit_points:
        return "points_invalid_step"
    if available is None:
        return "points_need_member"
    if asked > available:
        return "insufficient_points"
    if rules.points_value_fen(asked) > basis * rules.redeem_max_percent // 100:
        return "points_exceed_total"
    return None


def earn_points(lines: Iterable[PricedLine], rules: PointsRules, tier: str | None) -> int:
    """Points for what is actually paid on lines that earn (excluded SKUs do not), floor per sale."""
    eligible = sum(line.net_fen for line in lines if line.sku not in rules.excluded_skus)
    return eligible * rules.earn_rate(tier) // 100
