"""An independent model of the pricing rules, written from docs/till.md ("Pricing, step by step",
"Spreading a discount over lines", the coupon kinds, stacking, points) and nothing else, against
the agent's `price()` on random baskets: if the doc leaves out or misstates a rule, they disagree."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import example, given, settings, strategies as st

from posedge.agent.domain.pricing import Line, PointsRules, StackingRules, price
from posedge.agent.till.codes import CouponCode

NOW = 1_790_000_000


@dataclass(frozen=True)
class DocRules:
    max_per_sale: int
    same_campaign: bool
    earn_per_yuan: int
    tiers: dict
    excluded: frozenset
    unit_points: int
    unit_fen: int
    max_percent: int


def doc_spread(amount: int, weights: list[int]) -> list[int]:
    basis = sum(weights)
    if amount <= 0 or basis <= 0:
        return [0] * len(weights)
    amount = min(amount, basis)
    shares = [amount * w // basis for w in weights]
    left = amount - sum(shares)
    order = sorted(range(len(weights)), key=lambda i: (-((amount * weights[i]) % basis), i))
    for i in order[:left]:
        shares[i] += 1
    return shares


def doc_coupon(c: dict, lines: list[dict], net: list[int], applied: list[dict],
               r: DocRules) -> tuple[str | None, list[int]]:
    zero = [0] * len(lines)
    if (len(applied) >= r.max_per_sale or any(a["jti"] == c["jti"] for a in applied)
            or (not r.same_campaign and any(a["cmp"] == c["cmp"] for a in applied))):
        return "not_stackable", zero
    basis = sum(net)
    if basis < c.get("min", 0):
        return "min_spend_not_met", zero
    if "gift" in c:
        own = [i for i, l in enumerate(lines) if l["sku"] == c["gift"]]
        if not own:
            return "gift_not_in_basket", zero
        cuts = list(zero)
        payable = [i for i in own if net[i] > 0]
        if payable:
            i = payable[0]
            cuts[i] = net[i] if lines[i]["weighed"] else min(lines[i]["unit_price"], net[i])
    elif "off" in c:
        cuts = doc_spread(c["off"], net)
    else:
        amount = basis * c["pct"] // 100
        cuts = doc_spread(min(amount, c["cap"]) if "cap" in c else amount, net)
    if sum(cuts) == 0:
        return "no_benefit", zero
    return None, cuts


def doc_points_reason(asked: int, balance: int | None, total: int, r: DocRules) -> str | None:
    if asked == 0:
        return None
    if asked % r.unit_points:
        return "points_invalid_step"
    if balance is None:
        return "points_need_member"
    if asked > balance:
        return "insufficient_points"
    if asked // r.unit_points * r.unit_fen > total * r.max_percent // 100:
        return "points_exceed_total"
    return None


def doc_price(lines: list[dict], coupons: list[dict], r: DocRules, tier: str | None, asked: int,
              balance: int | None) -> dict:
    net = [l["gross"] - l["discount"] for l in lines]
    applied: list[dict] = []
    outcomes = []
    for c in coupons:
        reason, cuts = doc_coupon(c, lines, net, applied, r)
        outcomes.append((reason, sum(cuts)))
        if reason is None:
            applied.append(c)
            net = [n - k for n, k in zip(net, cuts)]
    points_reason = doc_points_reason(asked, balance, sum(net), r)
    value = asked // r.unit_points * r.unit_fen if points_reason is None else 0
    net = [n - k for n, k in zip(net, doc_spread(value, net))]
    rate = r.tiers.get(tier, r.earn_per_yuan) if tier else r.earn_per_yuan
    earned = sum(n for n, l in zip(net, lines) if l["sku"] not in r.excluded) * rate // 100
    return {"net": net, "coupons": outcomes, "points_reason": points_reason, "earned": earned}


skus = st.sampled_from(["A", "B", "CUP", "TOBACCO"])
line_st = st.builds(lambda sku, qty, price_, weighed, pct: {"sku": sku, "qty": qty, "unit_price": price_,
                                                            "weighed": weighed, "pct": pct},
                    skus, st.integers(1, 5), st.integers(0, 5000), st.booleans(), st.sampled_from([0, 0, 50, 100]))
coupon_st = st.one_of(
    st.builds(lambda j, k, off, m: {"jti": f"J{j}", "cmp": f"K{k}", "off": off, "min": m},
              st.integers(0, 4), st.integers(0, 2), st.integers(1, 8000), st.sampled_from([0, 0, 1000, 5000])),
    st.builds(lambda j, k, pct, cap: {"jti": f"J{j}", "cmp": f"K{k}", "pct": pct, **({"cap": cap} if cap else {})},
              st.integers(0, 4), st.integers(0, 2), st.integers(1, 100), st.sampled_from([None, 1, 50, 1000])),
    st.builds(lambda j, k, sku: {"jti": f"J{j}", "cmp": f"K{k}", "gift": sku},
              st.integers(0, 4), st.integers(0, 2), skus))


def as_line(l: dict) -> tuple[dict, Line]:
    gross = (l["qty"] * 100 * l["unit_price"] + 500) // 1000 if l["weighed"] else l["qty"] * l["unit_price"]
    doc = {**l, "gross": gross, "discount": gross * l["pct"] // 100}
    return doc, Line(l["sku"], gross, doc["discount"], None if l["weighed"] else l["unit_price"])


def as_code(c: dict) -> CouponCode:
    return CouponCode(jti=c["jti"], cmp=c["cmp"], exp=NOW, off=c.get("off"), pct=c.get("pct"), cap=c.get("cap"),
                      gift=c.get("gift"), min=c.get("min", 0))


@settings(max_examples=500, deadline=None)
@given(lines=st.lists(line_st, min_size=1, max_size=6), coupons=st.lists(coupon_st, max_size=4),
       max_per_sale=st.integers(0, 3), same=st.booleans(), tier=st.sampled_from([None, "gold", "silver"]),
       asked=st.sampled_from([0, 50, 100, 300, 1000, 5000]), balance=st.sampled_from([None, 0, 200, 10**6]),
       max_percent=st.sampled_from([0, 50, 100]))
def test_a_model_written_from_the_doc_prices_every_basket_as_the_agent_does(lines, coupons, max_per_sale, same, tier,
                                                                            asked, balance, max_percent):
    rules = DocRules(max_per_sale, same, 1, {"gold": 3}, frozenset({"TOBACCO"}), 100, 70, max_percent)
    pairs = [as_line(l) for l in lines]
    model = doc_price([d for d, _ in pairs], coupons, rules, tier, asked, balance)
    agent = price([l for _, l in pairs], [as_code(c) for c in coupons], StackingRules(max_per_sale, same),
                  PointsRules(1, {"gold": 3}, frozenset({"TOBACCO"}), 100, 70, max_percent), tier, asked, balance)
    assert [l.net_fen for l in agent.lines] == model["net"]
    assert [(c.reason, c.discount_fen) for c in agent.coupons] == model["coupons"]
    assert agent.points_reason == model["points_reason"]
    assert agent.points_earned == model["earned"]


# -- refunds: the "Refund shares" rules, against the agent's Refunds on a real SQLite file -----------

import itertools  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck  # noqa: E402

from posedge.agent.till.feature import QuoteIn  # noqa: E402
from posedge.agent.till.refunds import RefundIn  # noqa: E402

ids = itertools.count()


def doc_share(whole: int, after: int, before: int, total: int) -> int:
    return whole * after // total - whole * before // total if total > 0 else 0


def doc_refund(paid: list[int], gross: list[int], qty: list[int], before: list[int], after: list[int],
               earned: int, redeemed: int) -> dict:
    weights = paid if any(paid) else [g or q for g, q in zip(gross, qty)]
    money = {i + 1: doc_share(p, a, b, q) for i, (p, q, b, a) in enumerate(zip(paid, qty, before, after)) if a != b}
    refunded = lambda done: sum(w * d // q for w, d, q in zip(weights, done, qty))  # noqa: E731
    r_before, r_after, total = refunded(before), refunded(after), sum(weights)
    return {"money": money, "reversed": doc_share(earned, r_after, r_before, total),
            "returned": doc_share(redeemed, r_after, r_before, total)}


@pytest.fixture
def till(make_till):
    """One till for every hypothesis example (ids are unique); redeem_max_percent 100, so points can pay all."""
    unlimited_offline = {"max_hours_since_hq": 0, "max_value_fen": 10**9, "max_per_day_per_till": 10**6}
    return make_till(coupons={"offline": unlimited_offline}, points={"tiers": {"gold": 3}})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prices=st.lists(st.tuples(st.integers(1, 5), st.one_of(st.integers(0, 120), st.integers(0, 3_000))),
                       min_size=1, max_size=4),
       off=st.sampled_from([0, 150, 10**6]), points=st.sampled_from([0, 100, 500, 2000]),
       picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=8))
@example(prices=[(2, 50), (1, 0)], off=0, points=100, picks=[0, 2, 1])  # paid entirely by points: gross, then qty
def test_a_refund_model_written_from_the_doc_gives_back_what_the_agent_gives_back(till, hq, prices, off, points, picks):
    member_id, sale_id = f"D{next(ids)}", f"DS{next(ids)}"
    till.apply("members", {"member_id": member_id, "version": 1, "tier": "gold", "points": 10_000})
    lines = [{"sku": f"R{i}", "qty": q, "unit_price_fen": p} for i, (q, p) in enumerate(prices)]
    codes = [hq.coupon(f"DC{next(ids)}", off=off)] if off else []
    quote = till.run(till.till.quote(QuoteIn.model_validate({"lines": lines, "member_id": member_id, "coupons": codes,
                                                             "points_redeemed": points})))
    codes = [c for c, o in zip(codes, quote["coupons"]) if o["applied"]]
    spent = quote["points_redeemed"]
    till.sale({"sale_id": sale_id, "lines": lines, "member_id": member_id, "coupons": codes, "points_redeemed": spent,
               "payments": [{"method": "cash", "amount_fen": quote["total_fen"]}] if quote["total_fen"] else []})
    paid = [l["net_fen"] for l in quote["lines"]]
    gross = [l["gross_fen"] for l in quote["lines"]]
    qty = [q for q, _ in prices]
    done = [0] * len(qty)
    for n, pick in enumerate(picks):
        open_lines = [i for i in range(len(qty)) if done[i] < qty[i]]
        if not open_lines:
            break
        i = open_lines[pick % len(open_lines)]
        take = 1 + pick % (qty[i] - done[i])
        after = list(done)
        after[i] += take
        model = doc_refund(paid, gross, qty, done, after, quote["points_earned"], spent)
        _, answer = till.run(till.refunds.refund(sale_id, RefundIn.model_validate(
            {"refund_id": f"{sale_id}-{n}", "lines": [{"line_no": i + 1, "qty": take}]})))
        assert {l["line_no"]: l["refund_fen"] for l in answer["lines"]} == model["money"]
        assert (answer["points_reversed"], answer["points_returned"]) == (model["reversed"], model["returned"])
        done = after
