"""The till in process: scan resolution, HQ pushes and their events, confirmation seam, claim tokens."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from posedge.agent.till.codes import CodeRefused
from posedge.agent.till.coupons import HqUnreachable, RedemptionRequest, Unreachable, Verdict
from posedge.agent.till.hq_records import RecordInvalid, parse_record, record_hq_contact

from .conftest import NOW, STORE


def sale(till, sale_id, price, pay, **extra):
    return till.sale({"sale_id": sale_id, "lines": [{"sku": "A", "qty": 1, "unit_price_fen": price}],
                      "payments": [{"method": "cash", "amount_fen": pay}] if pay else [], **extra})


def refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(CodeRefused) as caught:
        fn(*args, **kwargs)
    return caught.value.code


def test_scanned_codes_resolve_to_who_what_and_why_not(make_till, hq):
    till = make_till()
    till.apply("members", {"member_id": "M1", "version": 1, "tier": "gold", "points": 42})
    till.apply("pickups", {"order_id": "O1", "version": 1, "items": [{"sku": "A", "qty": 1}]})
    resolve = lambda text: till.run(till.till.resolve_scan(text))  # noqa: E731
    member = resolve(hq.member("M1", "gold"))
    assert (member["kind"], member["valid"], member["member"]["points_balance"]) == ("member", True, 42)
    coupon = resolve(hq.coupon("C9", off=300))
    assert (coupon["kind"], coupon["valid"], coupon["coupon"]["off"]) == ("coupon", True, 300)
    assert resolve(hq.pickup("O1", STORE))["pickup"]["items"] == [{"sku": "A", "qty": 1}]
    assert resolve(hq.pickup("O2", STORE)) | {"message": ""} == {
        "kind": "pickup", "valid": False, "reason": "not_found", "order_id": "O2", "message": ""}
    wrong = resolve(hq.coupon("C8", st=["elsewhere"]))
    assert (wrong["kind"], wrong["valid"], wrong["reason"]) == ("coupon", False, "wrong_store")
    assert resolve("6901234567892") is None


def test_hq_push_applies_newer_versions_counts_as_contact_and_announces_double_redemption(make_till, hq):
    till = make_till()
    events = []
    till.till.notify = lambda name, payload: events.append((name, payload))
    sale(till, "s1", 1000, 700, coupons=[hq.coupon("C1", off=300)], coupon_override={"manager": "m", "reason": "r"})
    report = till.run(till.till.apply_from_hq("verdicts", [
        {"coupon_id": "C1", "verdict": "double_redemption", "other_store": "store-9", "version": 2},
        {"coupon_id": "C1", "verdict": "confirmed", "version": 1},  # older: ignored
        {"coupon_id": "C2"}]))
    assert report["applied"] == 1 and report["ignored_older"] == 1 and report["invalid"][0]["line"] == 3
    assert events == [("coupon_verdict", {"version": 2, "coupon_id": "C1", "verdict": "double_redemption",
                                          "other_store": "store-9", "detail": None})]
    till.run(till.till.apply_from_hq("verdicts", [{"coupon_id": "C1", "verdict": "double_redemption", "version": 2}]))
    assert len(events) == 1  # a replayed verdict is not announced again
    status = till.till.status()
    assert status["coupon_verdicts"][0]["sale_id"] == "s1" and status["last_hq_contact_at"] is not None


def test_member_tombstone_keeps_its_version(make_till, hq):
    till = make_till()
    till.apply("members", {"member_id": "M1", "version": 3, "card_no": "K1"},
               {"member_id": "M1", "version": 4, "deleted": True})
    assert till.apply("members", {"member_id": "M1", "version": 3, "card_no": "K1"}).ignored == 1
    with pytest.raises(Exception) as caught:
        till.run(till.till.lookup_member("K1"))
    assert getattr(caught.value, "code", None) == "member_not_found"


def test_bad_records_are_refused_with_a_reason():
    for kind, record in [("members", {"member_id": "M 1", "version": 1}),
                         ("stock", {"sku": "A", "qty": 1.0, "version": 1}),
                         ("pickups", {"order_id": "O", "version": 0}), ("members", ["not", "an", "object"]),
                         ("revocations", {"scope": "store", "ref": "x", "version": 1})]:
        with pytest.raises(RecordInvalid):
            parse_record(kind, record)


def test_offline_refuse_policy_refuses_even_with_a_manager(make_till, hq):
    till = make_till(coupons={"offline": {"beyond": "refuse", "max_value_fen": 100}})
    till.hq_contact()
    code = refusal(sale, till, "s1", 1000, 500, coupons=[hq.coupon("C1", off=500)],
                   coupon_override={"manager": "m", "reason": "r"})
    assert code == "offline_limit"
    assert sale(till, "s2", 1000, 900, coupons=[hq.coupon("C2", off=100)]).body["coupons"][0]["mode"] == "offline"


def test_offline_acceptance_needs_recent_contact_with_hq(make_till, hq):
    till = make_till(coupons={"offline": {"max_hours_since_hq": 1}})
    assert refusal(sale, till, "s1", 1000, 900, coupons=[hq.coupon("C1", off=100)]) == "offline_limit"  # never heard
    long_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    till.writer.submit(lambda conn: record_hq_contact(conn, "link", at=long_ago)).result(10)
    assert refusal(sale, till, "s2", 1000, 900, coupons=[hq.coupon("C2", off=100)]) == "offline_limit"
    till.hq_contact()
    assert sale(till, "s3", 1000, 900, coupons=[hq.coupon("C3", off=100)]).body["coupons"][0]["mode"] == "offline"


class AnsweringHq:
    """The confirmation seam answered as HQ would over MQTT (that link comes with the sync issue)."""

    def __init__(self, verdict=None, silent=False):
        self.verdict, self.silent, self.asked = verdict, silent, []

    async def confirm(self, request: RedemptionRequest, timeout_s: float):
        self.asked.append(request)
        if self.silent:
            await asyncio.Event().wait()
        return self.verdict

    def describe(self) -> str:
        return "online (test)"


def test_online_confirmation_accepts_refuses_or_falls_back_to_the_offline_policy(make_till, hq):
    till = make_till(coupons={"confirm_timeout_ms": 50, "offline": {"max_hours_since_hq": 0}})
    till.till.confirmer = AnsweringHq(Verdict(True))
    assert sale(till, "s1", 1000, 900, coupons=[hq.coupon("C1", off=100)]).body["coupons"][0]["mode"] == "online"
    assert till.till.confirmer.asked[0].coupon_id == "C1" and till.till.confirmer.asked[0].discount_fen == 100
    till.till.confirmer = AnsweringHq(Verdict(False, "already_redeemed"))
    assert refusal(sale, till, "s2", 1000, 900, coupons=[hq.coupon("C2", off=100)]) == "hq_refused"
    till.till.confirmer = AnsweringHq(silent=True)
    assert sale(till, "s3", 1000, 900, coupons=[hq.coupon("C3", off=100)]).body["coupons"][0]["mode"] == "offline"


def test_the_default_confirmer_says_hq_is_unreachable():
    request = RedemptionRequest("C1", "k", "s1", None, 100, None)
    assert asyncio.run(HqUnreachable().confirm(request, 1.0)) == Unreachable("no HQ link configured")


def test_a_wired_claim_signer_puts_its_token_on_the_answer_and_the_pending_claim(make_till, hq):
    till = make_till()
    till.till.claim_signer = lambda sale_id, amount, points, at: hq.sign({"sub": sale_id, "amt": amount, "pts": points})
    answer = sale(till, "s1", 2000, 2000).body
    assert answer["claim_code"].count(".") == 2 and answer["claim_points"] == 20
    assert till.sql("SELECT token FROM pending_claims WHERE sale_id = 's1'") == [(answer["claim_code"],)]


def test_retry_after_the_member_code_expired_answers_the_original(make_till, hq, clock):
    till = make_till()
    till.hq_contact()
    body = {"member_code": hq.member("M1"), "coupons": [hq.coupon("C1", off=100)]}
    first = sale(till, "s1", 1000, 900, **body)
    clock.now = NOW + 3600
    again = sale(till, "s1", 1000, 900, **body)
    assert (first.created, again.created, again.body) == (True, False, first.body)


def test_points_cannot_go_below_zero_when_two_sales_spend_the_same_points(make_till, hq):
    till = make_till()
    till.apply("members", {"member_id": "M1", "version": 1, "points": 100})
    from posedge.agent.domain.sales import SaleIn
    bodies = [SaleIn.model_validate({"sale_id": f"p{i}", "member_id": "M1", "points_redeemed": 100,
                                     "lines": [{"sku": "A", "qty": 1, "unit_price_fen": 1000}],
                                     "payments": [{"method": "cash", "amount_fen": 900}]}) for i in range(2)]

    async def both():
        return await asyncio.gather(*(till.sales.record(b) for b in bodies), return_exceptions=True)

    results = till.run(both())
    assert sorted(type(r).__name__ for r in results) == ["Refused_insufficient_points", "SaleOutcome"]
    assert till.sql("SELECT coalesce(sum(delta), 0) FROM points_entries WHERE reason = 'redeem'") == [(-100,)]
