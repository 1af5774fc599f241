"""Quote and sale agree for any basket and coupon set; the points balance is the sum of its ledger.

In-process (the real SaleService + Till + StoreWriter on a real SQLite file) so hypothesis can run
hundreds of baskets quickly; the same paths are exercised over real HTTP in test_api.py.
"""

from __future__ import annotations

import itertools
import os

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from posedge.agent.till.codes import CodeRefused
from posedge.agent.till.feature import QuoteIn
from posedge.agent.till.refunds import RefundIn

EXAMPLES = 400 if os.environ.get("POSEDGE_SLOW") == "1" else 60
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
ids = itertools.count()

line_st = st.fixed_dictionaries({
    "sku": st.sampled_from(["A", "B", "GIFT", "TOBACCO"]),
    "qty": st.integers(1, 4),
    "unit_price_fen": st.integers(0, 20_000),
}, optional={"discount_fen": st.integers(0, 500)})

coupon_st = st.tuples(
    st.sampled_from(["off", "pct", "gift", "off-min", "wrong-store", "expired", "bound-other"]),
    st.integers(1, 30_000), st.integers(1, 100), st.sampled_from(["k1", "k2"]))


def mint(hq, kind, amount, pct, campaign):
    jti = f"C{next(ids)}"
    if kind == "off":
        return hq.coupon(jti, campaign, off=amount)
    if kind == "pct":
        return hq.coupon(jti, campaign, pct=pct, cap=amount)
    if kind == "gift":
        return hq.coupon(jti, campaign, gift="GIFT")
    if kind == "off-min":
        return hq.coupon(jti, campaign, off=amount // 10 + 1, min=amount)
    if kind == "wrong-store":
        return hq.coupon(jti, campaign, off=amount, st=["elsewhere"])
    if kind == "expired":
        return hq.coupon(jti, campaign, off=amount, ttl_s=-3600)
    return hq.coupon(jti, campaign, off=amount, sub="someone-else")


def fix_discounts(lines):
    for line in lines:
        line["discount_fen"] = min(line.get("discount_fen", 0), line["qty"] * line["unit_price_fen"])
    return lines


@pytest.fixture
def till(make_till):
    till = make_till(coupons={"max_per_sale": 2, "offline": {"max_hours_since_hq": 0, "max_value_fen": 10**9,
                                                               "max_per_day_per_till": 10**6}},
                     points={"tiers": {"gold": 2}, "excluded_skus": ["TOBACCO"], "redeem_max_percent": 50})
    return till


@PROPERTY
@given(lines=st.lists(line_st, min_size=1, max_size=6), coupons=st.lists(coupon_st, max_size=3),
       member=st.booleans(), points=st.sampled_from([0, 100, 300, 1000, 5000, 150]))
def test_quote_and_sale_agree(till, hq, lines, coupons, member, points):
    """GIVEN any basket, coupons and points WHEN quoted, then sold with the quoted total
    THEN the sale records exactly the quote's figures, or is refused with the quote's first reason."""
    lines = fix_discounts(lines)
    member_id = f"M{next(ids)}"
    if member:
        till.apply("members", {"member_id": member_id, "version": 1, "tier": "gold", "points": 1000})
    codes = [mint(hq, *c) for c in coupons]
    who = {"member_code": hq.member(member_id, "gold")} if member else {}
    quote = till.run(till.till.quote(QuoteIn.model_validate({"lines": lines, "coupons": codes,
                                                             "points_redeemed": points, **who})))
    assert quote["total_fen"] >= 0 and quote["gross_fen"] - quote["discount_fen"] == quote["total_fen"]
    payments = [{"method": "cash", "amount_fen": quote["total_fen"]}] if quote["total_fen"] else []
    body = {"sale_id": f"S{next(ids)}", "lines": lines, "coupons": codes, "points_redeemed": points,
            "payments": payments, **who}
    refusals = [c["reason"] for c in quote["coupons"] if not c["applied"]]
    if quote["points_reason"]:
        refusals.append(quote["points_reason"])
    try:
        answer = till.sale(body).body
    except CodeRefused as exc:
        event(f"refused: {exc.code}")
        assert refusals, f"the quote applied everything but the sale was refused: {exc.code}"
        assert exc.code in refusals
        assert till.sql("SELECT count(*) FROM sales WHERE sale_id = ?", body["sale_id"]) == [(0,)]
        return
    event("sold")
    assert not refusals, f"the quote refused {refusals} but the sale went through"
    for key in ("discount_fen", "total_fen", "coupon_discount_fen", "points_discount_fen", "points_earned"):
        assert answer[key] == quote[key], key
    if member:
        assert answer["points_balance"] == 1000 - points + quote["points_earned"]


@PROPERTY
@given(ops=st.lists(st.tuples(st.sampled_from(["sale", "refund", "hq"]), st.integers(1, 5_000),
                              st.sampled_from([0, 100, 200])), min_size=1, max_size=8))
def test_points_balance_is_the_sum_of_the_ledger(till, hq, ops):
    """GIVEN any mix of sales, refunds and HQ pushes THEN balance = HQ base + local entries after through_seq."""
    member_id, version, sales = f"L{next(ids)}", 1, []
    till.apply("members", {"member_id": member_id, "version": version, "points": 500})
    for op, amount, points in ops:
        if op == "sale":
            from posedge.agent.till.members import balance
            have = till.reader.read_sync(lambda c: balance(c, member_id))
            spend = points if points <= have and points // 100 * 100 <= amount // 2 else 0
            sale_id = f"S{next(ids)}"
            total = amount - spend
            till.sale({"sale_id": sale_id, "member_id": member_id, "points_redeemed": spend,
                       "lines": [{"sku": "A", "qty": 1, "unit_price_fen": amount}],
                       "payments": [{"method": "cash", "amount_fen": total}] if total else []})
            sales.append(sale_id)
        elif op == "refund" and sales:
            till.run(till.refunds.refund(sales.pop(0), RefundIn(refund_id=f"R{next(ids)}")))
        elif op == "hq":  # HQ folds every entry so far into its balance
            version += 1
            rows = till.sql("SELECT coalesce(sum(delta), 0), coalesce(max(seq), 0) FROM points_entries"
                            " WHERE member_id = ?", member_id)
            till.apply("members", {"member_id": member_id, "version": version, "points": 500 + rows[0][0],
                                   "points_through": rows[0][1]})
    ledger = till.sql("SELECT coalesce(sum(delta), 0) FROM points_entries WHERE member_id = ?", member_id)[0][0]
    shown = till.run(till.till.lookup_member(hq.member(member_id)))["points_balance"]
    assert shown == 500 + ledger
    assert isinstance(shown, int)


@PROPERTY
@given(prices=st.lists(st.tuples(st.integers(1, 5), st.integers(1, 9_999)), min_size=1, max_size=4),
       cuts=st.lists(st.integers(0, 10**6), min_size=1, max_size=6), points=st.sampled_from([0, 100, 500]))
def test_partial_refunds_add_up_to_exactly_the_sale(till, hq, prices, cuts, points):
    """GIVEN a member sale with a coupon and points WHEN refunded in any pieces THEN money, points and stock
    come back exactly, not a fen or point more or less."""
    member_id, sale_id = f"F{next(ids)}", f"S{next(ids)}"
    till.hq_contact()
    till.apply("members", {"member_id": member_id, "version": 1, "points": 10_000})
    lines = [{"sku": f"R{i}", "qty": qty, "unit_price_fen": price} for i, (qty, price) in enumerate(prices)]
    coupon = hq.coupon(f"C{next(ids)}", off=150)
    quote = till.run(till.till.quote(QuoteIn.model_validate({"lines": lines, "member_id": member_id,
                                                             "coupons": [coupon], "points_redeemed": points})))
    spend = 0 if quote["points_reason"] else points
    codes = [coupon] if quote["coupons"][0]["applied"] else []
    sale = till.sale({"sale_id": sale_id, "lines": lines, "member_id": member_id, "coupons": codes,
                      "points_redeemed": spend, "payments": [{"method": "cash", "amount_fen": quote["total_fen"]}]
                      if quote["total_fen"] else []}).body
    left = {i + 1: qty for i, (qty, _) in enumerate(prices)}
    refunded_fen, n = 0, 0
    while any(left.values()):
        line_no = [k for k, v in left.items() if v][cuts[n % len(cuts)] % len([k for k, v in left.items() if v])]
        qty = 1 + cuts[n % len(cuts)] % left[line_no]
        left[line_no] -= qty
        ok, answer = till.run(till.refunds.refund(sale_id, RefundIn.model_validate(
            {"refund_id": f"{sale_id}-r{n}", "lines": [{"line_no": line_no, "qty": qty}]})))
        refunded_fen += answer["refund_fen"]
        n += 1
    assert refunded_fen == sale["total_fen"]
    assert answer["complete"] and answer["points_balance"] == 10_000
    for i, (qty, _) in enumerate(prices):
        assert till.sql("SELECT coalesce(sum(delta), 0) FROM stock_movements WHERE sale_id = ? AND sku = ?",
                        sale_id, f"R{i}") == [(0,)]
