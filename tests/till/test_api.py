"""The till over the real HTTP API of a real agent process, with data loaded by `posedge data import`."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from typing import Any, Iterator

import httpx
import pytest

from conftest import AgentProcess
from posedge.agent.till.codes import CodeMinter, b64url_decode, b64url_encode

STORE = "store-1"  # the store id of the root conftest's agents
RACES = 40 if os.environ.get("POSEDGE_SLOW") == "1" else 6


def till_config(hq: CodeMinter) -> str:
    return f"""
[hq]
clock_skew_s = 30
[hq.public_keys]
"{hq.kid}" = "{hq.public_key_b64}"
[members]
phone_hash_key = "test-phone-key"
[points.tiers]
gold = 2
[coupons]
max_per_sale = 2
[coupons.offline]
max_value_fen = 2000
max_per_day_per_till = 3
max_hours_since_hq = 72
beyond = "override"
"""


@pytest.fixture(scope="module")
def hq() -> CodeMinter:
    return CodeMinter.generate("hq-api")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, hq: CodeMinter) -> Iterator[AgentProcess]:
    process = AgentProcess(tmp_path_factory.mktemp("till-agent"), till_config(hq)).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def api(agent: AgentProcess) -> Iterator[httpx.Client]:
    with agent.client() as client:
        yield client


def data_import(agent: AgentProcess, kind: str, *records: Any) -> subprocess.CompletedProcess:
    path = agent.home / f"{kind}-{os.urandom(4).hex()}.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n")
    command = [sys.executable, "-m", "posedge", "data", "import", kind, str(path), "--config", str(agent.config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=agent.home)


def imported(agent: AgentProcess, kind: str, *records: Any) -> dict[str, Any]:
    done = data_import(agent, kind, *records)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def db(agent: AgentProcess) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{agent.home / 'var' / 'posedge.db'}?mode=ro", uri=True)


def cash(amount: int) -> list[dict[str, Any]]:
    return [{"method": "cash", "amount_fen": amount}] if amount else []


def basket(*prices: int) -> list[dict[str, Any]]:
    return [{"sku": f"SKU-{i}", "qty": 1, "unit_price_fen": p} for i, p in enumerate(prices)]


# -- members ---------------------------------------------------------------------------------------

def test_member_found_by_code_card_and_phone_and_the_phone_is_never_stored(agent, api, hq):
    imported(agent, "members", {"member_id": "M-A", "version": 2, "tier": "gold", "card_no": "CARD-0001",
                                "phone": "13812345678", "consent": True, "points": 800})
    by_code = api.get("/v1/members/lookup", params={"code": hq.member("M-A", "gold")}).json()
    by_card = api.get("/v1/members/lookup", params={"code": "CARD-0001"}).json()
    by_phone = api.get("/v1/members/lookup", params={"code": "+86 138-1234-5678"}).json()
    assert (by_code["found_by"], by_card["found_by"], by_phone["found_by"]) == ("member_code", "card_no", "phone")
    assert by_code["member_id"] == by_card["member_id"] == by_phone["member_id"] == "M-A"
    assert by_phone["points_balance"] == 800 and by_phone["phone_masked"] == "138****5678"
    assert api.get("/v1/members/lookup", params={"code": "13900000000"}).json()["code"] == "member_not_found"
    raw = b"".join(p.read_bytes() for p in (agent.home / "var").glob("posedge.db*"))
    assert b"13812345678" not in raw


def test_older_member_record_is_ignored(agent, api, hq):
    imported(agent, "members", {"member_id": "M-V", "version": 5, "points": 100})
    report = imported(agent, "members", {"member_id": "M-V", "version": 4, "points": 999})
    assert report == {"applied": 0, "ignored_older": 1, "invalid": []}
    assert api.get("/v1/members/lookup", params={"code": hq.member("M-V")}).json()["points_balance"] == 100


def test_invalid_import_lines_are_reported_by_number_and_the_rest_applied(agent):
    done = data_import(agent, "members", {"member_id": "M-OK", "version": 1}, "not json", {"member_id": "M-X"},
                       {"member_id": "M-Y", "version": 1, "points": 1.5})
    assert done.returncode == 1
    assert json.loads(done.stdout)["applied"] == 1
    assert ":2: not JSON" in done.stderr and ":3: version" in done.stderr and ":4: points" in done.stderr


def test_member_unknown_to_the_store_buys_and_points_wait_for_hq(api, hq):
    answer = api.post("/v1/sales", json={"member_code": hq.member("M-NEW", "basic"), "lines": basket(2550),
                                         "payments": cash(2550)})
    assert answer.status_code == 201, answer.text
    member = answer.json()
    assert (member["member_id"], member["points_earned"], member["points_balance"]) == ("M-NEW", 25, 25)
    member = api.get("/v1/members/lookup", params={"code": hq.member("M-NEW")}).json()
    assert (member["known"], member["pending_points"], member["points_balance"]) == (False, 25, 25)


# -- a full sale -------------------------------------------------------------------------------------

def test_sale_with_member_coupon_and_points_matches_its_quote_and_commits_everything(agent, api, hq):
    imported(agent, "members", {"member_id": "M-B", "version": 1, "tier": "gold", "points": 1000})
    request = {"member_code": hq.member("M-B", "gold"), "coupons": [hq.coupon("CP-B1", "spring", off=500, min=3000)],
               "points_redeemed": 300, "lines": basket(2000, 1999)}
    quote = api.post("/v1/quote", json=request).json()
    assert (quote["coupon_discount_fen"], quote["points_discount_fen"], quote["total_fen"]) == (500, 300, 3199)
    assert [line["coupon_discount_fen"] for line in quote["lines"]] == [250, 250]
    sale = api.post("/v1/sales", json={**request, "sale_id": "till-b-1", "till": "T1", "payments": cash(3199)})
    assert sale.status_code == 201, sale.text
    body = sale.json()
    assert (body["discount_fen"], body["total_fen"], body["points_earned"]) == (800, 3199, quote["points_earned"])
    assert body["points_balance"] == 1000 - 300 + quote["points_earned"] == 1000 - 300 + 3199 * 2 // 100
    assert body["coupons"] == [{"coupon_id": "CP-B1", "campaign": "spring", "discount_fen": 500, "mode": "offline"}]
    with db(agent) as conn:
        rows = conn.execute("SELECT kind FROM outbox WHERE key IN ('till-b-1', 'CP-B1', 'M-B') ORDER BY seq")
        kinds = [k for (k,) in rows]
        movements = conn.execute("SELECT count(*) FROM stock_movements WHERE sale_id = 'till-b-1'").fetchone()[0]
    assert sorted(kinds) == sorted(["redemption", "points", "points", "sale"]) and movements == 2
    again = api.get("/v1/coupons/validate", params={"code": request["coupons"][0]}).json()
    assert (again["valid"], again["reason"]) == (False, "already_redeemed")


def test_tier_comes_from_the_member_code_when_scanned_and_from_the_store_record_by_member_id(agent, api, hq):
    """HQ minted the code minutes ago; the store's record may be days old (offline): the code's tier wins."""
    imported(agent, "members", {"member_id": "M-TIER", "version": 1, "tier": "basic", "points": 0})
    lines = basket(10000)
    by_code = api.post("/v1/quote", json={"member_code": hq.member("M-TIER", "gold"), "lines": lines}).json()
    by_id = api.post("/v1/quote", json={"member_id": "M-TIER", "lines": lines}).json()
    both = api.post("/v1/quote", json={"member_code": hq.member("M-TIER", "gold"), "member_id": "M-TIER",
                                       "lines": lines}).json()
    tiers_and_points = [(q["tier"], q["points_earned"]) for q in (by_code, by_id, both)]
    assert tiers_and_points == [("gold", 200), ("basic", 100), ("gold", 200)]
    looked_up = api.get("/v1/members/lookup", params={"code": hq.member("M-TIER", "gold")}).json()
    assert looked_up["tier"] == "gold"
    sale = api.post("/v1/sales", json={"sale_id": "tier-by-code", "member_code": hq.member("M-TIER", "gold"),
                                       "lines": lines, "payments": cash(10000)})
    assert sale.status_code == 201, sale.text
    assert (sale.json()["points_earned"], sale.json()["points_balance"]) == (200, 200)
    with db(agent) as conn:
        assert conn.execute("SELECT tier FROM till_sales WHERE sale_id = 'tier-by-code'").fetchone() == ("gold",)
        assert conn.execute("SELECT tier FROM members WHERE member_id = 'M-TIER'").fetchone() == ("basic",)


def test_gift_coupon_takes_the_first_line_of_its_sku_with_something_left_to_pay(agent, api, hq):
    # Line 1: the POS already gave this mug away (discount = the line); line 3 holds two payable mugs.
    lines = [{"sku": "MUG", "qty": 1, "unit_price_fen": 800, "discount_fen": 800},
             {"sku": "TEA", "qty": 1, "unit_price_fen": 1500},
             {"sku": "MUG", "qty": 2, "unit_price_fen": 800}]
    gift = hq.coupon("CP-GIFT-2ND", "gift-mug", gift="MUG")
    quote = api.post("/v1/quote", json={"coupons": [gift], "lines": lines}).json()
    assert [c["applied"] for c in quote["coupons"]] == [True]
    assert [l["coupon_discount_fen"] for l in quote["lines"]] == [0, 0, 800]
    assert quote["total_fen"] == 1500 + 800
    sale = api.post("/v1/sales", json={"sale_id": "gift-2nd-line", "till": "T-GIFT", "coupons": [gift], "lines": lines,
                                       "payments": cash(2300)})
    assert sale.status_code == 201, sale.text
    assert sale.json()["coupons"] == [{"coupon_id": "CP-GIFT-2ND", "campaign": "gift-mug", "discount_fen": 800,
                                       "mode": "offline"}]
    with db(agent) as conn:
        priced = json.loads(conn.execute("SELECT lines FROM till_sales WHERE sale_id = 'gift-2nd-line'").fetchone()[0])
    assert [l["net_fen"] for l in priced] == [0, 1500, 800]
    free_already = [lines[0], lines[1]]
    refused = api.post("/v1/sales", json={"till": "T-GIFT", "coupons": [hq.coupon("CP-GIFT-NONE", gift="MUG")],
                                          "lines": free_already, "payments": cash(1500)})
    assert (refused.status_code, refused.json()["code"], refused.json()["coupon_index"]) == (422, "no_benefit", 0)


def test_refused_coupon_is_422_with_its_reason_and_nothing_is_recorded(agent, api, hq):
    for code, reason in [(hq.coupon("CP-W", st=["store-9"]), "wrong_store"),
                         (hq.coupon("CP-M", off=100, min=99999), "min_spend_not_met"),
                         (hq.member("M-A"), "wrong_kind")]:
        answer = api.post("/v1/sales", json={"sale_id": f"refused-{reason}", "coupons": [code], "lines": basket(1000),
                                             "payments": cash(500)})
        assert (answer.status_code, answer.json()["code"]) == (422, reason)
        assert api.get(f"/v1/sales/refused-{reason}").status_code == 404


def test_quote_changes_nothing_and_lists_each_refusal(agent, api, hq):
    with db(agent) as conn:
        before = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
    coupons = [hq.coupon("CP-Q1", "q", off=700), hq.coupon("CP-Q2", "q", off=700), "garbage",
               hq.coupon("CP-Q3", st=["x"])]
    quote = api.post("/v1/quote", json={"lines": basket(5000), "coupons": coupons}).json()
    assert [(c["coupon_index"], c["applied"], c.get("reason")) for c in quote["coupons"]] == [
        (0, True, None), (1, False, "not_stackable"), (2, False, "malformed"), (3, False, "wrong_store")]
    assert (quote["total_fen"], quote["claim_points"]) == (4300, 43)
    with db(agent) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == before


# -- coupons ---------------------------------------------------------------------------------------

def test_coupon_validate_answers_200_with_reason_and_claims(agent, api, hq):
    token = hq.coupon("CP-V", "autumn", pct=10, cap=2000)
    valid = api.get("/v1/coupons/validate", params={"code": token})
    assert valid.status_code == 200 and valid.json()["valid"] is True
    assert valid.json()["claims"] | {"exp": 0} == {"k": "c", "jti": "CP-V", "cmp": "autumn", "pct": 10, "cap": 2000,
                                                 "min": 0, "st": None, "sub": None, "nbf": None, "iat": None, "exp": 0}
    head, payload, sig = token.split(".")
    flipped = b64url_encode(bytes([b64url_decode(sig)[0] ^ 1]) + b64url_decode(sig)[1:])
    forged = api.get("/v1/coupons/validate", params={"code": f"{head}.{payload}.{flipped}"}).json()
    assert (forged["valid"], forged["reason"], forged["claims"]["jti"]) == (False, "bad_signature", "CP-V")
    imported(agent, "revocations", {"scope": "campaign", "ref": "autumn", "version": 1})
    revoked = api.get("/v1/coupons/validate", params={"code": token}).json()
    assert (revoked["valid"], revoked["reason"]) == (False, "revoked")
    sale = api.post("/v1/sales", json={"coupons": [token], "lines": basket(1000), "payments": cash(900)})
    assert (sale.status_code, sale.json()["code"]) == (422, "revoked")


def test_coupon_bound_to_a_member(api, hq):
    token = hq.coupon("CP-BOUND", off=100, sub="M-A")
    other_member = api.get("/v1/coupons/validate", params={"code": token, "member_id": "M-Z"}).json()
    assert other_member["reason"] == "wrong_member"
    no_member = api.post("/v1/sales", json={"coupons": [token], "lines": basket(1000), "payments": cash(900)})
    assert (no_member.status_code, no_member.json()["code"]) == (422, "wrong_member")
    right = api.post("/v1/sales", json={"member_id": "M-A", "coupons": [token], "lines": basket(1000),
                                        "payments": cash(900)})
    assert right.status_code == 201, right.text


def test_two_tills_redeeming_one_coupon_at_the_same_moment_exactly_one_wins(agent, hq):
    """GIVEN one coupon WHEN two POS terminals post sales with it at once THEN one 201, one 422 already_redeemed."""
    for race in range(RACES):
        token = hq.coupon(f"CP-RACE-{race}", "race", off=300)
        gate = threading.Barrier(2, timeout=10)
        results: list[httpx.Response] = []

        def till(name: str) -> None:
            with agent.client() as client:
                body = {"sale_id": f"race-{race}-{name}", "till": "T-RACE", "coupons": [token], "lines": basket(1000),
                        "payments": cash(700), "coupon_override": {"manager": "lead", "reason": "race test"}}
                gate.wait()
                results.append(client.post("/v1/sales", json=body))

        threads = [threading.Thread(target=till, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert sorted(r.status_code for r in results) == [201, 422], [r.text for r in results]
        assert [r.json()["code"] for r in results if r.status_code == 422] == ["already_redeemed"]
        with db(agent) as conn:
            redeemed = conn.execute("SELECT count(*) FROM coupon_redemptions WHERE coupon_id = ?",
                                    (f"CP-RACE-{race}",)).fetchone()
            assert redeemed == (1,)


def test_offline_limits_refuse_and_a_manager_override_is_recorded(agent, api, hq):
    big = hq.coupon("CP-BIG", off=3000)
    refused = api.post("/v1/sales", json={"till": "T-LIM", "coupons": [big], "lines": basket(5000),
                                          "payments": cash(2000)})
    assert (refused.status_code, refused.json()["code"]) == (422, "offline_limit")
    assert "2000 fen" in refused.json()["message"]
    accepted = api.post("/v1/sales", json={"sale_id": "override-1", "till": "T-LIM", "coupons": [big],
                                           "lines": basket(5000), "payments": cash(2000),
                                           "coupon_override": {"manager": "王店长", "reason": "VIP complaint"}})
    assert accepted.status_code == 201 and accepted.json()["coupons"][0]["mode"] == "override"
    for n in range(3):  # the per-day, per-till count
        ok = api.post("/v1/sales", json={"till": "T-LIM", "coupons": [hq.coupon(f"CP-DAY-{n}", off=100)],
                                         "lines": basket(1000), "payments": cash(900)})
        assert ok.status_code == 201, ok.text
    fourth = api.post("/v1/sales", json={"till": "T-LIM", "coupons": [hq.coupon("CP-DAY-3", off=100)],
                                         "lines": basket(1000), "payments": cash(900)})
    assert (fourth.status_code, fourth.json()["code"]) == (422, "offline_limit")
    assert fourth.json()["limit"].startswith("this till")
    with db(agent) as conn:
        row = conn.execute("SELECT mode, override_by, override_reason FROM coupon_redemptions"
                           " WHERE sale_id = 'override-1'").fetchone()
    assert row == ("override", "王店长", "VIP complaint")


def test_hq_double_redemption_verdict_shows_in_status(agent, api, hq):
    api.post("/v1/sales", json={"till": "T-V", "coupons": [hq.coupon("CP-DOUBLE", off=100)], "lines": basket(1000),
                                "payments": cash(900)}).raise_for_status()
    imported(agent, "verdicts", {"coupon_id": "CP-DOUBLE", "verdict": "double_redemption", "other_store": "store-7",
                                 "version": 1})
    till = api.get("/v1/status").json()["till"]
    assert till["coupon_verdicts"][0] | {"received_at": None} == {
        "coupon_id": "CP-DOUBLE", "verdict": "double_redemption", "other_store": "store-7", "detail": None,
        "received_at": None, "sale_id": till["coupon_verdicts"][0]["sale_id"], "mode": "offline"}
    assert till["confirmer"].startswith("unreachable") and till["hq_kids"] == ["hq-api"]


# -- refunds, claims, pickups, stock -------------------------------------------------------------------

def test_refunds_partial_then_full_reverse_points_stock_and_return_the_coupon(agent, api, hq):
    imported(agent, "members", {"member_id": "M-R", "version": 1, "points": 500})
    imported(agent, "stock", {"sku": "SKU-R", "qty": 10, "version": 1})
    coupon = hq.coupon("CP-R", off=300)
    lines = [{"sku": "SKU-R", "qty": 3, "unit_price_fen": 1000}]
    sale = api.post("/v1/sales", json={"sale_id": "refund-me", "member_id": "M-R", "coupons": [coupon],
                                       "points_redeemed": 200, "lines": lines, "payments": cash(2500)}).json()
    assert sale["points_balance"] == 500 - 200 + 25
    assert api.get("/v1/inventory/SKU-R").json()["on_hand"] == 7
    part = api.post("/v1/sales/refund-me/refunds", json={"refund_id": "rf-1", "lines": [{"line_no": 1, "qty": 1}]})
    assert part.status_code == 201, part.text
    assert (part.json()["refund_fen"], part.json()["points_reversed"], part.json()["points_returned"]) == (833, 8, 66)
    assert part.json()["coupons_returned"] == []
    replay = api.post("/v1/sales/refund-me/refunds", json={"refund_id": "rf-1", "lines": [{"line_no": 1, "qty": 1}]})
    assert (replay.status_code, replay.json()) == (200, part.json())
    other = api.post("/v1/sales/refund-me/refunds", json={"refund_id": "rf-1"})
    assert (other.status_code, other.json()["code"]) == (409, "refund_conflict")
    too_much = api.post("/v1/sales/refund-me/refunds", json={"refund_id": "rf-x", "lines": [{"line_no": 1, "qty": 3}]})
    assert (too_much.status_code, too_much.json()["code"]) == (422, "refund_exceeds_sale")
    rest = api.post("/v1/sales/refund-me/refunds", json={"refund_id": "rf-2"}).json()
    assert part.json()["refund_fen"] + rest["refund_fen"] == 2500
    assert rest["points_balance"] == 500 and rest["coupons_returned"] == ["CP-R"]
    assert api.get("/v1/inventory/SKU-R").json()["on_hand"] == 10
    assert api.get("/v1/coupons/validate", params={"code": coupon}).json()["valid"] is True
    assert api.post("/v1/sales/nope/refunds", json={"refund_id": "rf-3"}).status_code == 404


def test_a_refund_with_an_empty_line_list_is_refused_and_records_nothing(agent, api):
    """GIVEN a sale WHEN the POS posts a refund with "lines": [] THEN 422 on `lines`, no refund row, no event."""
    sold = api.post("/v1/sales", json={"sale_id": "refund-empty", "lines": basket(1000), "payments": cash(1000)})
    sold.raise_for_status()
    refused = api.post("/v1/sales/refund-empty/refunds", json={"refund_id": "rf-empty", "lines": []})
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_input"), refused.text
    assert "lines" in refused.text
    with db(agent) as conn:
        assert conn.execute("SELECT COUNT(*) FROM refunds WHERE refund_id = 'rf-empty'").fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM outbox WHERE kind = 'refund' AND payload LIKE '%rf-empty%'"
                            ).fetchone() == (0,)
    whole = api.post("/v1/sales/refund-empty/refunds", json={"refund_id": "rf-empty"})
    assert (whole.status_code, whole.json()["refund_fen"]) == (201, 1000)


def test_sale_without_member_records_a_claim(agent, api):
    sale = api.post("/v1/sales", json={"sale_id": "claim-1", "lines": basket(12345), "payments": cash(12345)}).json()
    assert sale["claim_points"] == 123 and sale["claim_expires_at"] > sale["recorded_at"]
    with db(agent) as conn:
        claim = conn.execute("SELECT points, amount_fen FROM pending_claims WHERE sale_id = 'claim-1'").fetchone()
        assert claim == (123, 12345)
        payload = conn.execute("SELECT payload FROM outbox WHERE kind = 'sale' AND key = 'claim-1'").fetchone()[0]
        event = json.loads(payload)
    assert event["claim"]["points"] == 123 and [m["delta"] for m in event["stock_movements"]] == [-1]
    refund = api.post("/v1/sales/claim-1/refunds", json={"refund_id": "claim-rf"}).json()
    assert refund["claim_points_reversed"] == 123 and refund["refund_fen"] == 12345
    with db(agent) as conn:
        left = conn.execute("SELECT points - points_refunded FROM pending_claims WHERE sale_id = 'claim-1'").fetchone()
        assert left == (0,)


def test_pickup_is_shown_collected_once_and_a_second_collect_is_409(agent, api, hq):
    imported(agent, "pickups", {"order_id": "O-1", "version": 1, "store_id": STORE, "phone_masked": "139****0000",
                                "items": [{"sku": "SKU-P", "name": "月饼礼盒", "qty": 2}]})
    order = api.get("/v1/pickups/O-1").json()
    assert (order["state"], order["items"][0]["qty"], order["collected"]) == ("ready", 2, None)
    first = api.post("/v1/pickups/O-1/collect", json={"code": hq.pickup("O-1", STORE), "till": "T1"})
    assert first.status_code == 200 and first.json()["state"] == "collected"
    second = api.post("/v1/pickups/O-1/collect", json={"till": "T2"})
    assert (second.status_code, second.json()["code"]) == (409, "already_collected")
    assert api.get("/v1/pickups/O-404").status_code == 404
    assert api.get("/v1/inventory/SKU-P").json()["on_hand"] == -2
    elsewhere = data_import(agent, "pickups", {"order_id": "O-2", "version": 1, "store_id": "store-9"})
    assert elsewhere.returncode == 1 and "not store-1" in elsewhere.stderr


def test_inventory_is_hq_snapshot_plus_local_movements_and_negative_is_flagged(agent, api):
    imported(agent, "stock", {"sku": "SKU-I", "qty": 5, "version": 3})
    api.post("/v1/sales", json={"lines": [{"sku": "SKU-I", "qty": 7, "unit_price_fen": 100}],
                                "payments": cash(700)}).raise_for_status()
    stock = api.get("/v1/inventory/SKU-I").json()
    assert (stock["on_hand"], stock["negative"], stock["hq_qty"], stock["local_delta"]) == (-2, True, 5, -7)
    assert imported(agent, "stock", {"sku": "SKU-I", "qty": 50, "version": 2})["ignored_older"] == 1
    with db(agent) as conn:
        seq = conn.execute("SELECT max(seq) FROM stock_movements WHERE sku = 'SKU-I'").fetchone()[0]
    imported(agent, "stock", {"sku": "SKU-I", "qty": 20, "version": 4, "through_seq": seq})
    assert api.get("/v1/inventory/SKU-I").json() | {"sku": 0} == {
        "sku": 0, "on_hand": 20, "hq_qty": 20, "version": 4, "local_delta": 0, "local_movements": 0, "known": True,
        "negative": False}
