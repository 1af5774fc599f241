"""The status page's view and its recent problems, on the real event hub and the real logging machinery."""

from __future__ import annotations

import logging

from posedge.agent.events import EventHub
from posedge.agent.metrics.overview import config_view, overview
from posedge.agent.metrics.problems import RecentProblems

WECHAT_CODE = "134567890123456789"
MEMBER_CODE = "eyJhbGciOiJFZERTQSIsImtpZCI6ImhxLTEifQ.eyJrIjoibSIsInN1YiI6Ik0tMSJ9." + "s" * 86


def test_last_scans_show_product_codes_and_mask_every_other_kind():
    """GIVEN scans of a product, a payment code, a member code and unknown text WHEN the view is built THEN the
    GTIN is in clear, the others masked (wallet digits and last four; a long code shortened), newest first."""
    hub = EventHub()
    for kind, text in (("gtin", "6901234567892"), ("payment_code", WECHAT_CODE[:2] + "*" * 12 + WECHAT_CODE[-4:]),
                       ("member", MEMBER_CODE), ("unknown", "13812345678")):
        hub.publish("scan", {"kind": kind, "text": text, "scanner": "pos", "at": "2026-12-02T10:00:00+00:00"})
    hub.publish("printer", {"printer": "front", "state": "ready"})
    last = overview({}, hub.recent(), [])["scans"]["last"]
    assert [s["kind"] for s in last] == ["unknown", "member", "payment_code", "gtin"]
    texts = {s["kind"]: s["text"] for s in last}
    assert texts["gtin"] == "6901234567892"
    assert texts["payment_code"] == "13************6789"
    assert texts["member"] == "ey********" + MEMBER_CODE[-4:]
    assert texts["unknown"] == "13*****5678"


def test_the_view_picks_fields_so_nothing_added_to_the_status_leaks():
    """GIVEN a status with the store key, the storage path and a field nobody chose WHEN the view is built THEN
    none of them is in it; the config is 'file only' (version 0) until the agent reports a pushed one."""
    status = {"storage": {"state": "ok", "path": "/var/lib/posedge/posedge.db", "size_bytes": 4096},
              "receipts": {"store_key": {"x": "KEY"}, "printers": [{"name": "front", "state": "ready", "queued": 0,
                                                                     "secret": "x"}]},
              "till": {"hq_kids": ["hq-1"]}, "sales": {"recorded": 2, "recorded_fen": 600}}
    view = overview(status, [], [])
    text = repr(view)
    assert "KEY" not in text and "posedge.db" not in text and "secret" not in text and "hq-1" not in text
    assert view["printers"] == [{"name": "front", "state": "ready", "queued": 0}]
    assert view["sales"] == {"recorded": 2}
    assert view["config"] == {"version": 0, "source": "file only", "rejected": None}
    assert config_view({"version": 7, "rejected": 1}) == {"version": 7, "source": "pushed", "rejected": 1}


def test_recent_problems_keep_warnings_and_errors_newest_first_masked_without_tracebacks():
    """GIVEN the ring attached to the posedge loggers WHEN an info, a warning quoting a payment-code-shaped run and
    an error with a traceback are logged THEN the ring holds the last two, newest first, the code masked, no
    traceback; detached, it hears nothing more."""
    problems = RecentProblems()
    problems.attach()
    log = logging.getLogger("posedge.agent.test_overview")
    try:
        log.info("event=routine")
        log.warning("event=odd detail=%r", f"got {WECHAT_CODE}")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("event=failed")
    finally:
        problems.detach()
    log.error("event=after_detach")
    recent = problems.recent()
    assert [(p["level"], p["message"]) for p in recent] == [
        ("ERROR", "event=failed"), ("WARNING", "event=odd detail='got 13************6789'")]
    assert recent[0]["logger"] == "posedge.agent.test_overview" and problems.seen == 2
