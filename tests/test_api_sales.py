"""The local API against a real agent process: sales, idempotency, and refusal of bad input."""

from __future__ import annotations

import json

import httpx
import pytest

from conftest import AgentProcess, sale_body


def count_sales(agent: AgentProcess) -> int:
    with agent.client() as client:
        return client.get("/v1/status").json()["outbox"]["depth"]


def test_health_needs_no_token(running_agent: AgentProcess) -> None:
    answer = httpx.get(f"{running_agent.url}/v1/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "ok"


def test_sale_is_created_then_replayed_identically(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        first = client.post("/v1/sales", json=sale_body("pos1-0001", 1250))
        again = client.post("/v1/sales", json=sale_body("pos1-0001", 1250))
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json() == first.json()
    assert first.json()["sale_id"] == "pos1-0001"
    assert first.json()["total_fen"] == 1250
    assert first.json()["receipt_no"]


def test_same_sale_id_with_another_body_is_a_conflict(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("pos1-0002", 500)).status_code == 201
        conflict = client.post("/v1/sales", json=sale_body("pos1-0002", 600))
        stored = client.get("/v1/sales/pos1-0002").json()
    assert conflict.status_code == 409
    assert conflict.json()["code"] == "sale_conflict"
    assert stored["total_fen"] == 500


def test_sale_without_id_gets_a_uuid7(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body(None, 100))
    assert answer.status_code == 201
    sale_id = answer.json()["sale_id"]
    assert len(sale_id) == 36 and sale_id[14] == "7"


def test_recorded_sale_reads_back_with_masked_reference(running_agent: AgentProcess) -> None:
    body = {
        "sale_id": "pos1-0003",
        "lines": [
            {"sku": "6901234567892", "name": "矿泉水", "qty": 3, "unit_price_fen": 150, "discount_fen": 50},
            {"sku": "2000001", "name": "散装苹果", "qty": 1234, "unit": "g", "unit_price_fen": 1290},
        ],
        "payments": [{"method": "wechat", "amount_fen": 400 + 1592, "reference": "4200001234567890123456"}],
        "occurred_at": "2026-11-23T10:15:00+08:00",
        "till": "till-2",
    }
    with running_agent.client() as client:
        assert client.post("/v1/sales", json=body).status_code == 201
        sale = client.get("/v1/sales/pos1-0003").json()
    assert [line["amount_fen"] for line in sale["lines"]] == [400, 1592]  # 1234 g at 12.90/kg, half up
    assert sale["payments"][0]["reference"].endswith("3456")
    assert "4200001234567890123456" not in json.dumps(sale)
    assert sale["occurred_at"] == "2026-11-23T10:15:00+08:00"


def test_unknown_sale_is_404(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        answer = client.get("/v1/sales/nope")
    assert answer.status_code == 404
    assert answer.json()["code"] == "not_found"


def test_totals_mismatch_names_field_and_both_amounts(running_agent: AgentProcess) -> None:
    body = sale_body("pos1-0004", 300)
    body["payments"][0]["amount_fen"] = 290
    with running_agent.client() as client:
        answer = client.post("/v1/sales", json=body)
    assert answer.status_code == 422
    assert answer.json() | {"message": ""} == {"code": "totals_mismatch", "message": "", "field": "payments",
                                                "expected_fen": 300, "found_fen": 290}


# One refused body a line, so the table reads as a table (hence the noqa on the long ones).
BAD_BODIES = {
    "negative money": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": -100}], "payments": [{"method": "cash", "amount_fen": 100}]}, 422, "lines[0].unit_price_fen"),  # noqa: E501
    "float money": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": 1.5}], "payments": [{"method": "cash", "amount_fen": 1}]}, 422, "lines[0].unit_price_fen"),  # noqa: E501
    "money as string": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": "100"}], "payments": [{"method": "cash", "amount_fen": 100}]}, 422, "lines[0].unit_price_fen"),  # noqa: E501
    "float quantity": ({"lines": [{"sku": "a", "qty": 0.5, "unit_price_fen": 100}], "payments": [{"method": "cash", "amount_fen": 50}]}, 422, "lines[0].qty"),  # noqa: E501
    "unknown field": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": 100}], "payments": [{"method": "cash", "amount_fen": 100}], "tip": 1}, 422, "tip"),  # noqa: E501
    "no lines": ({"lines": [], "payments": [{"method": "cash", "amount_fen": 100}]}, 422, "lines"),
    "bad sale id": ({"sale_id": "a b/c", "lines": [{"sku": "a", "qty": 1, "unit_price_fen": 100}], "payments": [{"method": "cash", "amount_fen": 100}]}, 422, "sale_id"),  # noqa: E501
    "naive time": ({"occurred_at": "2026-11-23T10:00:00", "lines": [{"sku": "a", "qty": 1, "unit_price_fen": 100}], "payments": [{"method": "cash", "amount_fen": 100}]}, 422, "occurred_at"),  # noqa: E501
    "discount over line": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": 100, "discount_fen": 101}], "payments": [{"method": "cash", "amount_fen": 1}]}, 422, "lines[0]"),  # noqa: E501
    "zero payment": ({"lines": [{"sku": "a", "qty": 1, "unit_price_fen": 0}], "payments": [{"method": "cash", "amount_fen": 0}]}, 422, "payments[0].amount_fen"),  # noqa: E501
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_refused_with_the_field_and_nothing_is_stored(running_agent: AgentProcess, case: str) -> None:
    body, status, field = BAD_BODIES[case]
    before = count_sales(running_agent)
    with running_agent.client() as client:
        answer = client.post("/v1/sales", json=body)
    assert answer.status_code == status, answer.text
    problem = answer.json()
    assert problem["code"] == "invalid_input"
    assert field in [error["field"] for error in problem["errors"]]
    assert count_sales(running_agent) == before


RAW_REQUESTS = {
    "malformed json": (b'{"lines": [', {"Content-Type": "application/json"}, 400, "invalid_json"),
    "NaN": (b'{"lines": NaN}', {"Content-Type": "application/json"}, 400, "json_number_out_of_range"),
    "array body": (b"[1, 2]", {"Content-Type": "application/json"}, 422, "invalid_input"),
    "not json": (b"sku=1", {"Content-Type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
    "huge body": (b'{"x": "' + b"a" * 400_000 + b'"}', {"Content-Type": "application/json"}, 413, "body_too_large"),
    "lone surrogate escape": (b'{"lines": [{"sku": "a", "name": "\\ud800", "qty": 1, "unit_price_fen": 100}],'
                              b' "payments": [{"method": "cash", "amount_fen": 100}]}',
                              {"Content-Type": "application/json"}, 400, "json_lone_surrogate"),
    "invalid utf-8": (b'{"lines": [{"sku": "a", "name": "\xff", "qty": 1, "unit_price_fen": 100}]}',
                      {"Content-Type": "application/json"}, 400, "json_not_utf8"),
}


@pytest.mark.parametrize("case", sorted(RAW_REQUESTS))
def test_malformed_request_gets_specific_4xx(running_agent: AgentProcess, case: str) -> None:
    content, headers, status, code = RAW_REQUESTS[case]
    before = count_sales(running_agent)
    with running_agent.client() as client:
        answer = client.post("/v1/sales", content=content, headers=headers)
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert count_sales(running_agent) == before


def test_huge_chunked_body_is_refused(running_agent: AgentProcess) -> None:
    def chunks():
        for _ in range(100):
            yield b"a" * 8192

    with running_agent.client() as client:
        answer = client.post("/v1/sales", content=chunks(), headers={"Content-Type": "application/json"})
    assert (answer.status_code, answer.json()["code"]) == (413, "body_too_large")


@pytest.mark.parametrize(
    "headers, params, status, code",
    [
        ({}, {}, 401, "unauthorized"),
        ({"Authorization": "Bearer wrong-token-wrong-token"}, {}, 401, "bad_token"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, {}, 401, "unauthorized"),
        ({}, {"access_token": "x"}, 400, "token_in_url"),
    ],
)
def test_requests_without_the_right_token_are_refused(running_agent: AgentProcess, headers, params, status,
                                                      code) -> None:
    before = count_sales(running_agent)
    answer = httpx.post(f"{running_agent.url}/v1/sales", json=sale_body(), headers=headers, params=params)
    assert (answer.status_code, answer.json()["code"]) == (status, code)
    assert count_sales(running_agent) == before


def test_other_host_header_is_refused_against_dns_rebinding(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        answer = client.get("/v1/status", headers={"Host": f"evil.example:{running_agent.port}"})
    assert (answer.status_code, answer.json()["code"]) == (403, "host_not_allowed")


def test_cors_only_for_listed_origins(running_agent: AgentProcess) -> None:
    preflight = {"Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = httpx.options(f"{running_agent.url}/v1/sales", headers={"Origin": "http://pos.local:3000", **preflight})
    refused = httpx.options(f"{running_agent.url}/v1/sales", headers={"Origin": "http://evil.example", **preflight})
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "http://pos.local:3000"
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    with running_agent.client() as client:
        from_page = client.post("/v1/sales", json=sale_body(), headers={"Origin": "http://evil.example"})
    assert (from_page.status_code, from_page.json()["code"]) == (403, "origin_not_allowed")


def test_status_reports_outbox_storage_and_devices(running_agent: AgentProcess) -> None:
    with running_agent.client() as client:
        client.post("/v1/sales", json=sale_body("pos1-status", 100))
        status = client.get("/v1/status").json()
    assert status["outbox"]["depth"] >= 1
    assert status["outbox"]["oldest_pending_age_s"] >= 0
    assert status["storage"]["state"] == "ok"
    assert status["storage"]["free_bytes"] > 0
    assert isinstance(status["devices"], list)


def test_openapi_description_is_published_and_matches_docs(running_agent: AgentProcess) -> None:
    from pathlib import Path

    published = httpx.get(f"{running_agent.url}/v1/openapi.json").json()
    assert "/v1/sales" in published["paths"]
    assert "SaleIn" in published["components"]["schemas"]
    committed = json.loads((Path(__file__).parents[1] / "docs" / "openapi.json").read_text())
    assert committed == published, "docs/openapi.json is stale: run `python tools/write_openapi.py`"
