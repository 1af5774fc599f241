"""Logs: one event per line, JSON fields, nothing personal; a real agent handling a payment code and a phone."""

from __future__ import annotations

import json
import logging
from typing import Any

from posedge.agent.logs import JsonFormatter, TextFormatter, parse_fields
from tests.conftest import sale_body

WECHAT_CODE = "134567890123456789"  # shaped like a WeChat Pay payment code
PHONE = "13812345678"


def record(message: str, *args: Any, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(f"bad input {WECHAT_CODE}")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("posedge.test", logging.WARNING, __file__, 1, message, args, exc_info)


def test_json_line_has_the_message_fields_typed_and_masked() -> None:
    line = JsonFormatter().format(record("event=sale_refused reason=%s count=%d ratio=%.1f who=%r note",
                                         "coupon_used", 3, 0.5, f"phone {PHONE} code {WECHAT_CODE}"))
    entry = json.loads(line)
    assert entry["event"] == "sale_refused" and entry["reason"] == "coupon_used"
    assert entry["count"] == 3 and entry["ratio"] == 0.5 and entry["level"] == "WARNING"
    assert entry["logger"] == "posedge.test" and entry["ts"].endswith("+00:00")
    assert entry["who"] == "phone 138****5678 code 13************6789"
    assert entry["message"] == "note"  # text that is no key=value pair is kept
    assert PHONE not in line and WECHAT_CODE not in line


def test_text_line_keeps_a_traceback_on_its_line_and_masks_it() -> None:
    line = TextFormatter(with_time=False).format(record("event=oops", exc=True))
    assert "\n" not in line and line.startswith("WARNING posedge.test event=oops exc=")
    assert "ValueError" in line and WECHAT_CODE not in line


def test_fields_parse_quoted_values_and_leave_numbers_in_text_alone() -> None:
    fields, rest = parse_fields("event=x error='it\\'s gone' path=/a/b ok=True gtin=6901234567892")
    assert fields == {"event": "x", "error": "it's gone", "path": "/a/b", "ok": True, "gtin": 6901234567892}
    assert rest == ""


def test_json_run_handling_a_payment_code_and_a_phone_logs_neither(agent_factory: Any) -> None:
    """GIVEN a real agent with --log-format json at DEBUG WHEN the POS sends a payment code scan, a phone
    look-up and a sale whose reference is the payment code THEN every log line is a JSON event with its
    fields and neither the code nor the phone appears anywhere in the log."""
    agent = agent_factory()
    agent.args = ["--log-format", "json", "--log-level", "DEBUG"]
    agent.start()
    with agent.client() as http:
        scan = http.post("/v1/scans", json={"text": WECHAT_CODE, "scanner": "pos"})
        assert scan.status_code == 200, scan.text
        assert scan.json()["event"]["kind"] == "payment_code"
        claim = http.post(f"/v1/scans/{scan.json()['event']['id']}/payment-code")
        assert claim.json()["text"] == WECHAT_CODE, claim.text  # the agent really held the clear code
        lookup = http.get("/v1/members/lookup", params={"code": PHONE})
        assert lookup.status_code in (404, 422), lookup.text
        body = sale_body(amount=500)
        body["payments"][0].update(method="wechat", reference=WECHAT_CODE)
        assert http.post("/v1/sales", json=body).status_code == 201
        bad = http.post("/v1/sales", json={**sale_body(), "phone_of_customer": PHONE})
        assert bad.status_code == 422
    assert agent.stop() == 0

    text = agent.log_text()
    lines = [line for line in text.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is one JSON event
    for entry in entries:
        assert {"ts", "level", "logger"} <= set(entry), entry
    events = {e.get("event") for e in entries}
    assert {"agent_started", "agent_listening", "agent_stopped"} <= events, events
    assert WECHAT_CODE not in text and PHONE not in text
