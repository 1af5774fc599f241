"""Pure pricing: coupons, points, earning; integer fen, never negative, line figures add up."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from posedge.agent.domain.ledger import Entry, Position, current, share
from posedge.agent.domain.pricing import Line, PointsRules, StackingRules, price, spread
from posedge.agent.till.codes import CouponCode

NOW = 1_790_000_000


def coupon(jti: str = "C1", cmp: str = "c", **benefit) -> CouponCode:
    return CouponCode(jti=jti, cmp=cmp, exp=NOW, **(benefit or {"off": 500}))


def test_amount_off_spreads_over_lines_by_largest_remainder():
    priced = price([Line("A", 1000), Line("B", 2000)], [coupon(off=100)])
    assert [l.coupon_discount_fen for l in priced.lines] == [33, 67]
    assert priced.total_fen == 2900


def test_percent_off_with_cap():
    assert price([Line("A", 10000)], [coupon(pct=20, cap=1500)]).coupon_discount_fen == 1500
    assert price([Line("A", 5000)], [coupon(pct=20, cap=1500)]).coupon_discount_fen == 1000
    assert price([Line("A", 999)], [coupon(pct=10)]).coupon_discount_fen == 99  # floor: never more than promised


def test_gift_takes_one_piece_of_its_sku_off():
    priced = price([Line("A", 1000), Line("CUP", 3 * 800, 0, 800)], [coupon(gift="CUP")])
    assert [l.coupon_discount_fen for l in priced.lines] == [0, 800]


def test_gift_not_in_basket_is_refused():
    assert price([Line("A", 1000)], [coupon(gift="CUP")]).coupons[0].reason == "gift_not_in_basket"


def test_gift_passes_over_a_line_with_nothing_left_to_pay_and_takes_the_next_line_of_its_sku():
    # The POS gave the first CUP away already (discount = the line); the second CUP is payable.
    lines = [Line("CUP", 800, 800, 800), Line("A", 1000), Line("CUP", 2 * 800, 0, 800)]
    priced = price(lines, [coupon(gift="CUP")])
    assert priced.coupons[0].applied
    assert [l.coupon_discount_fen for l in priced.lines] == [0, 0, 800]


def test_second_gift_coupon_takes_the_next_line_once_the_first_gift_emptied_its_line():
    lines = [Line("CUP", 800, 0, 800), Line("CUP", 800, 0, 800)]
    two = [coupon("G1", "x", gift="CUP"), coupon("G2", "x", gift="CUP")]
    priced = price(lines, two, StackingRules(max_per_sale=2, same_campaign=True))
    assert [l.coupon_discount_fen for l in priced.lines] == [800, 800]
    assert priced.total_fen == 0


def test_gift_whose_every_line_is_already_free_is_no_benefit_not_missing():
    lines = [Line("CUP", 800, 800, 800), Line("A", 1000)]
    assert price(lines, [coupon(gift="CUP")]).coupons[0].reason == "no_benefit"


def test_gift_on_a_weighed_line_takes_what_is_left_of_the_whole_line():
    lines = [Line("CHEESE", 1234, 234, None)]
    assert price(lines, [coupon(gift="CHEESE")]).coupon_discount_fen == 1000


def test_minimum_spend_is_checked_on_the_discounted_basket():
    lines = [Line("A", 10000, discount_fen=1000)]  # 90 yuan after the line discount
    assert price(lines, [coupon(off=500, min=9000)]).coupons[0].applied
    assert price(lines, [coupon(off=500, min=9001)]).coupons[0].reason == "min_spend_not_met"


def test_one_coupon_per_sale_by_default_and_stacking_from_config():
    two = [coupon("C1", "x", off=100), coupon("C2", "y", off=100)]
    assert [c.reason for c in price([Line("A", 5000)], two).coupons] == [None, "not_stackable"]
    stacked = price([Line("A", 5000)], two, StackingRules(max_per_sale=2))
    assert stacked.coupon_discount_fen == 200
    same = [coupon("C1", "x", off=100), coupon("C2", "x", off=100)]
    assert price([Line("A", 5000)], same, StackingRules(2)).coupons[1].reason == "not_stackable"
    assert price([Line("A", 5000)], same, StackingRules(2, same_campaign=True)).coupon_discount_fen == 200


def test_amount_off_larger_than_the_basket_stops_at_zero():
    priced = price([Line("A", 300)], [coupon(off=500)])
    assert (priced.coupon_discount_fen, priced.total_fen) == (300, 0)


def test_points_spend_in_steps_within_balance_and_share():
    rules = PointsRules(redeem_unit_points=100, redeem_unit_fen=100, redeem_max_percent=50)
    assert price([Line("A", 1000)], points=rules, points_redeemed=300, points_available=1000).points_discount_fen == 300
    def reason(redeemed: int, available: int) -> str | None:
        return price([Line("A", 1000)], points=rules, points_redeemed=redeemed,
                     points_available=available).points_reason

    assert reason(150, 1000) == "points_invalid_step"
    assert reason(300, 200) == "insufficient_points"
    assert reason(600, 1000) == "points_exceed_total"
    assert price([Line("A", 1000)], points=rules, points_redeemed=100).points_reason == "points_need_member"


def test_earning_by_tier_on_what_is_paid_and_excluded_skus_earn_nothing():
    rules = PointsRules(earn_per_yuan=1, tier_earn_per_yuan={"gold": 3}, excluded_skus=frozenset({"TOBACCO"}))
    lines = [Line("A", 1999), Line("TOBACCO", 5000)]
    assert price(lines, points=rules, tier="basic").points_earned == 19
    assert price(lines, points=rules, tier="gold").points_earned == 59
    with_coupon = price(lines, [coupon(off=1000)], points=rules, tier="gold")
    assert with_coupon.lines[0].coupon_discount_fen == 286  # 1000 spread over 1999 : 5000
    assert with_coupon.points_earned == (1999 - 286) * 3 // 100


# -- properties ----------------------------------------------------------------------------------

lines_st = st.lists(st.builds(lambda gross, pct, piece: Line(f"S{gross % 5}", gross, gross * pct // 100, piece),
                              st.integers(0, 10**7), st.integers(0, 100), st.one_of(st.none(), st.integers(0, 10**6))),
                    min_size=1, max_size=12)
coupons_st = st.lists(st.one_of(
    st.builds(lambda i, off, m: CouponCode(jti=f"C{i}", cmp=f"k{i % 3}", exp=NOW, off=off, min=m),
              st.integers(0, 50), st.integers(1, 10**6), st.integers(0, 10**6)),
    st.builds(lambda i, pct, cap: CouponCode(jti=f"P{i}", cmp=f"k{i % 3}", exp=NOW, pct=pct, cap=cap),
              st.integers(0, 50), st.integers(1, 100), st.one_of(st.none(), st.integers(1, 10**6))),
    st.builds(lambda i, s: CouponCode(jti=f"G{i}", cmp=f"k{i % 3}", exp=NOW, gift=f"S{s}"),
              st.integers(0, 50), st.integers(0, 6))), max_size=5)


@settings(max_examples=400, deadline=None)
@given(lines=lines_st, coupons=coupons_st, stack=st.integers(0, 5), same=st.booleans(),
       points=st.integers(0, 10**6), available=st.integers(0, 10**6), percent=st.integers(0, 100))
def test_totals_never_negative_integer_and_lines_add_up(lines, coupons, stack, same, points, available, percent):
    rules = PointsRules(redeem_unit_points=10, redeem_unit_fen=7, redeem_max_percent=percent)
    priced = price(lines, coupons, StackingRules(stack, same), rules, "gold", points, available)
    for line in priced.lines:
        for value in (line.net_fen, line.coupon_discount_fen, line.points_discount_fen):
            assert isinstance(value, int) and not isinstance(value, bool) and value >= 0
    assert priced.total_fen == priced.gross_fen - priced.discount_fen >= 0
    assert priced.coupon_discount_fen == sum(l.coupon_discount_fen for l in priced.lines)
    assert sum(1 for c in priced.coupons if c.applied) <= stack
    assert priced.points_earned >= 0 and isinstance(priced.points_earned, int)
    if priced.points_reason is None and points:
        assert priced.points_discount_fen == points // 10 * 7


@settings(max_examples=300, deadline=None)
@given(lines=lines_st, sku=st.integers(0, 6))
def test_gift_is_refused_only_when_no_line_of_its_sku_has_anything_left_to_pay(lines, sku):
    gift = f"S{sku}"
    outcome = price(lines, [coupon(gift=gift)]).coupons[0]
    own = [l for l in lines if l.sku == gift]
    payable = [l for l in own if l.net_fen > 0]
    if not own:
        assert outcome.reason == "gift_not_in_basket"
    elif not payable or (payable[0].piece_fen == 0):
        assert outcome.reason == "no_benefit"
    else:
        first = payable[0]
        assert outcome.applied
        one_piece = first.net_fen if first.piece_fen is None else min(first.piece_fen, first.net_fen)
        assert outcome.discount_fen == one_piece


@given(amount=st.integers(-5, 10**9), weights=st.lists(st.integers(0, 10**7), max_size=20))
def test_spread_is_exact_and_never_above_a_weight(amount, weights):
    shares = spread(amount, weights)
    assert sum(shares) == (min(amount, sum(weights)) if amount > 0 and sum(weights) > 0 else 0)
    assert all(0 <= s <= w for s, w in zip(shares, weights))


@given(whole=st.integers(0, 10**9), cuts=st.lists(st.integers(1, 50), min_size=1, max_size=10))
def test_partial_shares_add_up_to_the_whole(whole, cuts):
    total, done, given_back = sum(cuts), 0, 0
    for cut in cuts:
        given_back += share(whole, done + cut, done, total)
        done += cut
    assert given_back == whole


@given(base=st.integers(-10**6, 10**6), through=st.integers(0, 30),
       deltas=st.lists(st.integers(-1000, 1000), max_size=30))
def test_balance_is_hq_base_plus_entries_after_its_seq(base, through, deltas):
    entries = [Entry(seq, d) for seq, d in enumerate(deltas, 1)]
    assert current(Position(base, 1, through), entries) == base + sum(deltas[through:])
    assert current(Position(0, 0, 0), entries) == sum(deltas)


def test_impossible_basket_is_refused():
    from posedge.agent.domain.pricing import PricingError
    with pytest.raises(PricingError):
        price([Line("A", 100, discount_fen=101)])
