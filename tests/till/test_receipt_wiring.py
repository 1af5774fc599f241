"""The till and the receipt in one sale: the receipt shows the member's masked phone and points, the
coupons redeemed, and, for a sale without a member, the very claim token the sale answered."""

from __future__ import annotations

import base64
import json

from .test_api import agent, api, basket, db, hq, imported  # noqa: F401 (module-scoped agent fixtures)


def cash(fen: int) -> list[dict]:
    return [{"method": "cash", "amount_fen": fen}]


def job_facts(agent, sale_id: str) -> dict:  # noqa: F811
    conn = db(agent)
    try:
        row = conn.execute("SELECT facts FROM print_jobs WHERE sale_id = ? AND kind = 'receipt'", (sale_id,)).fetchone()
    finally:
        conn.close()
    assert row is not None, "the sale has no print job"
    return json.loads(row[0])


def test_member_sale_receipt_shows_masked_phone_points_and_coupon(agent, api, hq):  # noqa: F811
    imported(agent, "members", {"member_id": "M-RCPT", "version": 1, "tier": "gold", "points": 500,
                                "phone": "13812345678"})
    coupon = hq.coupon("CP-RCPT", off=300)
    answer = api.post("/v1/sales", json={"sale_id": "rcpt-member", "member_code": hq.member("M-RCPT", "gold"),
                                         "coupons": [coupon], "lines": basket(2000), "payments": cash(1700)})
    assert answer.status_code == 201, answer.text
    facts = job_facts(agent, "rcpt-member")
    member = facts["member"]
    assert member["phone"] == "138****5678"
    sale = answer.json()
    assert (member["points_earned"], member["points_balance"]) == (sale["points_earned"], sale["points_balance"])
    assert [(d["code"], d["amount_fen"]) for d in facts["discounts"]] == [("CP-RCPT", 300)]
    assert "13812345678" not in json.dumps(facts, ensure_ascii=False)


def test_sale_without_member_prints_the_claim_token_it_answered(agent, api):  # noqa: F811
    answer = api.post("/v1/sales", json={"sale_id": "rcpt-claim", "lines": basket(1200), "payments": cash(1200)})
    assert answer.status_code == 201, answer.text
    token = answer.json()["claim_code"]
    assert token and token.count(".") == 2
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert "rcpt-claim" in json.dumps(claims)
    assert job_facts(agent, "rcpt-claim")["extra"]["claim_code"] == token
