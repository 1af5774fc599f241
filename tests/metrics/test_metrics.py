"""GET /metrics: the Prometheus text format, parsed with prometheus_client's own parser, agrees with
GET /v1/status and with what was done; nothing personal in it; one registry per agent."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from posedge.agent.events import EventHub
from posedge.agent.metrics.feature import Metrics

from .conftest import PHONE, REFERENCE, WECHAT_CODE, settled

GTIN = "6901234567892"


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def wechat_sale(sale_id: str, amount: int) -> dict[str, Any]:
    return {"sale_id": sale_id, "lines": [{"sku": GTIN, "name": "矿泉水 550ml", "qty": 1, "unit_price_fen": amount}],
            "payments": [{"method": "wechat", "amount_fen": amount, "reference": REFERENCE}]}


def test_metrics_after_scans_sales_and_refunds_equal_the_status_and_hold_nothing_personal(store_agent, printer):
    """GIVEN a real agent with a network printer WHEN scans, sales, a retry, a conflict, a refund and refused
    requests happened THEN every number of GET /metrics equals GET /v1/status and what was done, API latency is
    labelled by route template, and no payment code, phone or payment reference appears."""
    with store_agent.client() as api:
        assert api.post("/v1/scans", json={"text": GTIN}).status_code in (200, 201)
        assert api.post("/v1/scans", json={"text": WECHAT_CODE, "scanner": "till2"}).status_code in (200, 201)
        rejected = api.post("/v1/scans", json={"text": "ab\x01cd"})
        assert rejected.json()["code"] == "scan_rejected", rejected.text
        reason = rejected.json()["reason"]
        assert api.get("/v1/members/lookup", params={"code": PHONE}).json()["code"] == "member_not_found"
        assert api.post("/v1/sales", json=wechat_sale("m-1", 300)).status_code == 201
        assert api.post("/v1/sales", json=wechat_sale("m-2", 450)).status_code == 201
        assert api.post("/v1/sales", json=wechat_sale("m-1", 300)).status_code == 200  # a retry
        assert api.post("/v1/sales", json=wechat_sale("m-1", 999)).status_code == 409  # another body
        refund = api.post("/v1/sales/m-2/refunds", json={"refund_id": "r-1"})
        assert refund.status_code == 201, refund.text
        assert httpx.get(f"{store_agent.url}/v1/status").json()["code"] == "unauthorized"
        printer.wait_for(lambda data: data.count(b"\x1dV") >= 2)  # both receipts cut
        status = settled(api)
        scrape = httpx.get(f"{store_agent.url}/metrics")  # no token: Prometheus scrapes without one
        after = api.get("/v1/status").json()

    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = scrape.text
    for secret in (WECHAT_CODE, PHONE, REFERENCE, store_agent.token):
        assert secret not in text
    assert status["storage"]["commits"] == after["storage"]["commits"]  # nothing moved during the scrape
    m = parse(text)

    assert value(m, "posedge_sales_total") == status["sales"]["recorded"] == 2
    assert value(m, "posedge_sales_fen_total") == status["sales"]["recorded_fen"] == 750
    assert value(m, "posedge_sale_retries_total") == status["sales"]["replayed"] == 1
    assert value(m, "posedge_sale_conflicts_total") == status["sales"]["conflicts"] == 1
    assert value(m, "posedge_refunds_total") == status["refunds"]["recorded"] == 1
    assert value(m, "posedge_refunds_fen_total") == status["refunds"]["refunded_fen"] == 450

    by_scanner = status["scanners"]["pipeline"]["by_scanner"]
    assert value(m, "posedge_scans_total", scanner="pos", kind="gtin") == by_scanner["pos"]["gtin"] == 1
    assert value(m, "posedge_scans_total", scanner="till2", kind="payment_code") == 1
    rejections = status["scanners"]["pipeline"]["rejected"]
    assert value(m, "posedge_scan_rejections_total", reason=reason) == rejections[reason] == 1

    assert value(m, "posedge_outbox_depth") == status["outbox"]["depth"] == 4  # store key, two sales, refund
    assert value(m, "posedge_outbox_oldest_pending_age_seconds") >= 0
    [front] = status["receipts"]["printers"]
    assert value(m, "posedge_print_queue_depth", printer="front") == front["queued"] == 0
    assert value(m, "posedge_print_jobs_printed_total", printer="front") == front["printed"] == 2
    assert value(m, "posedge_printer_state", printer="front", posedge_printer_state=front["state"]) == 1
    assert value(m, "posedge_sync_state", posedge_sync_state="disabled") == 1
    assert value(m, "posedge_sync_state", posedge_sync_state="connected") == 0
    assert value(m, "posedge_config_version") == 0  # the config file only

    commits = status["storage"]["commits"]
    assert value(m, "posedge_storage_inline_commits_total") == commits["inline"]
    assert value(m, "posedge_storage_batch_commits_total") == commits["batches"]
    assert value(m, "posedge_storage_commit_seconds_count") == commits["commit_statements"] > 0
    assert abs(value(m, "posedge_storage_commit_seconds_sum") - commits["commit_s_total"]) < 1e-6
    assert value(m, "posedge_storage_ok", state="ok") == 1

    assert value(m, "posedge_api_errors_total", code="unauthorized") == 1
    assert value(m, "posedge_api_errors_total", code="member_not_found") == 1
    assert value(m, "posedge_api_errors_total", code="sale_conflict") == 1
    assert value(m, "posedge_api_errors_total", code="scan_rejected") == 1
    # Latency by route template: the four POST /v1/sales, the refund under its template, never a raw path.
    assert value(m, "posedge_api_request_duration_seconds_count", method="POST", route="/v1/sales") == 4
    assert value(m, "posedge_api_request_duration_seconds_count", method="POST",
                 route="/v1/sales/{sale_id}/refunds") == 1
    routes = {dict(labels).get("route") for (_name, labels) in m if dict(labels).get("route")}
    assert not any("m-2" in route for route in routes), routes
    assert value(m, "posedge_agent_info", version=status["agent"]["version"], tenant="test", store_id="store-1") == 1


def test_metrics_keep_the_host_guard_and_count_its_refusals(store_agent):
    """GIVEN an agent WHEN a page of another site asks for /metrics through DNS rebinding (wrong Host) THEN 403,
    and the refusal is counted by its code; paths clients make up never become labels of their own."""
    refused = httpx.get(f"{store_agent.url}/metrics", headers={"Host": "attacker.example:80"})
    assert (refused.status_code, refused.json()["code"]) == (403, "host_not_allowed")
    with store_agent.client() as api:  # paths a client makes up: one series each route, whatever the path
        for n in range(5):
            assert api.get(f"/v1/sales/made-up-{n}").status_code == 404
            assert api.get(f"/no/such/path/{n}").status_code == 404
    m = parse(httpx.get(f"{store_agent.url}/metrics").text)
    assert value(m, "posedge_api_errors_total", code="host_not_allowed") == 1
    assert value(m, "posedge_api_responses_total", route="(no route)", status="403") == 1
    assert value(m, "posedge_api_responses_total", route="(no route)", status="404") == 5
    assert value(m, "posedge_api_responses_total", route="/v1/sales/{sale_id}", status="404") == 5
    assert value(m, "posedge_api_errors_total", code="not_found") == 10
    labels = {v for (_name, labels) in m for k, v in labels if k == "route"}
    assert not any("made-up" in route or "such" in route for route in labels), labels


def test_each_agent_has_its_own_registry():
    """GIVEN two agents' metrics in one process WHEN both are scraped THEN each shows its own numbers and the
    global registry of prometheus_client holds none of them."""
    def status(recorded: int):
        return lambda: {"sales": {"recorded": recorded, "recorded_fen": 0, "replayed": 0, "conflicts": 0}}

    first, second = Metrics(status(3), EventHub()), Metrics(status(5), EventHub())
    assert value(parse(first.scrape().decode()), "posedge_sales_total") == 3
    assert value(parse(second.scrape().decode()), "posedge_sales_total") == 5
    assert REGISTRY.get_sample_value("posedge_sales_total") is None
