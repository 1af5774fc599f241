"""Scanned member, coupon and pickup codes reach the POS event stream already resolved; HQ verdicts too."""

from __future__ import annotations

import asyncio

from posedge.agent.events import EventHub

from .test_api import agent, api, hq, imported  # noqa: F401 (module-scoped agent fixtures)


def test_a_scanned_member_code_arrives_resolved(agent, api, hq):  # noqa: F811
    imported(agent, "members", {"member_id": "M-SCAN", "version": 1, "tier": "gold", "points": 321})
    event = api.post("/v1/scans", json={"text": hq.member("M-SCAN", "gold")}).json()["event"]
    assert event["kind"] == "member"
    assert event["resolved"] | {"member": None} == {"kind": "member", "valid": True, "member": None}
    assert (event["resolved"]["member"]["member_id"], event["resolved"]["member"]["points_balance"]) == ("M-SCAN", 321)


def test_a_scanned_coupon_says_why_it_is_not_valid(api, hq):  # noqa: F811
    event = api.post("/v1/scans", json={"text": hq.coupon("CP-SCAN", st=["store-9"])}).json()["event"]
    assert (event["kind"], event["resolved"]["valid"], event["resolved"]["reason"]) == ("coupon", False, "wrong_store")
    forged = hq.coupon("CP-SCAN2").rsplit(".", 1)[0] + "." + "A" * 86
    event = api.post("/v1/scans", json={"text": forged}).json()["event"]
    assert (event["resolved"]["valid"], event["resolved"]["reason"]) == (False, "bad_signature")


def test_a_scanned_pickup_code_shows_the_order(agent, api, hq):  # noqa: F811
    imported(agent, "pickups", {"order_id": "O-SCAN", "version": 1, "items": [{"sku": "SKU-1", "qty": 1}]})
    event = api.post("/v1/scans", json={"text": hq.pickup("O-SCAN", "store-1")}).json()["event"]
    assert event["resolved"]["valid"] is True and event["resolved"]["pickup"]["items"] == [{"sku": "SKU-1", "qty": 1}]


def test_hq_double_redemption_verdict_is_published_to_the_pos(make_till, hq):  # noqa: F811
    till = make_till()
    hub = EventHub(100)
    till.till.notify = hub.publish

    async def verdict_event():
        hub.bind(asyncio.get_running_loop())
        subscription, _ = hub.subscribe(None)
        try:
            await till.till.apply_from_hq("verdicts", [{"coupon_id": "C1", "verdict": "double_redemption",
                                                        "other_store": "store-9", "version": 1}])
            return await subscription.next(5.0)
        finally:
            subscription.close()

    event = till.run(verdict_event())
    assert event is not None and event.type == "coupon_verdict"
    assert (event.data["coupon_id"], event.data["other_store"]) == ("C1", "store-9")


def test_a_scanned_code_whose_kind_claim_is_not_a_string_is_an_unknown_scan(api, hq):  # noqa: F811
    # A payload nobody signs: "k" as a list or an object (unhashable) must not break classification.
    for odd_kind in (["c"], {"k": "c"}):
        answer = api.post("/v1/scans", json={"text": hq.sign({"k": odd_kind, "jti": "CP-ODD", "exp": 2**31})})
        assert answer.status_code == 200, answer.text
        assert answer.json()["event"]["kind"] == "unknown"
