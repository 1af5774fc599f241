"""Member sales print, and a job that cannot be rendered says so: a real agent process, real HTTP, the
till's signed member codes, and a printer on a real TCP socket."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone

from conftest import sale_body
from posedge.agent.till.codes import CodeMinter
from scanners.conftest import SseReader
from till.test_api import till_config  # the till's keys and tiers: the member sale is the till's own

from .test_queue import cut_count, printer_config, printer_status, receipt_no_of, receipts, wait_until


def member_line(paper) -> str:
    return next(line for line in paper.lines if line.startswith("会员"))


def job_states(agent) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{agent.home / 'var' / 'posedge.db'}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT sale_id, state FROM print_jobs"))
    finally:
        conn.close()


def import_members(agent, *records: dict) -> None:
    path = agent.home / f"members-{os.urandom(4).hex()}.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    command = [sys.executable, "-m", "posedge", "data", "import", "members", str(path), "--config", str(agent.config)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=agent.home)
    assert done.returncode == 0, done.stderr


def test_member_sale_by_code_on_a_network_printer_prints(agent_factory, tcp_printer):
    """GIVEN a member the store has never seen, identified by the signed code from the mini-program (no phone on
    record), and a member imported without a phone WHEN each buys THEN both receipts reach the network printer,
    with the member's tier and points, and both jobs are done."""
    hq = CodeMinter.generate("hq-rcpt")
    agent = agent_factory(till_config(hq) + printer_config(tcp_printer.port)).start()
    import_members(agent, {"member_id": "M-NOPHONE", "version": 1, "tier": "basic", "points": 40})
    with agent.client() as client:
        by_code = client.post("/v1/sales", json=sale_body("code-1", 2500, member_code=hq.member("M-NEW", "gold")))
        assert by_code.status_code == 201, by_code.text
        [first] = receipts(tcp_printer.wait_for(cut_count(1)))
        imported = client.post("/v1/sales", json=sale_body("code-2", 1000, member_code=hq.member("M-NOPHONE", "basic")))
        assert imported.status_code == 201, imported.text
        second = receipts(tcp_printer.wait_for(cut_count(2)))[1]
        status = wait_until(lambda: printer_status(client)["printed"] == 2 and printer_status(client), what="both done")
    assert receipt_no_of(first) == by_code.json()["receipt_no"]
    assert receipt_no_of(second) == imported.json()["receipt_no"]
    assert member_line(first).split() == ["会员", "gold"] and member_line(second).split() == ["会员", "basic"]
    assert any(line.split() == ["本次积分", f"+{by_code.json()['points_earned']}"] for line in first.lines)
    assert any(line.split() == ["积分余额", str(imported.json()["points_balance"])] for line in second.lines)
    assert job_states(agent) == {"code-1": "done", "code-2": "done"}
    assert (status["render_failures"], status["last_render_error"]) == (0, None)


def unreadable_job(agent, sale_id: str, receipt_no: str) -> None:
    """A job whose stored facts this version cannot read (a line without its quantity, as a newer or broken
    writer might leave): rendering it fails whatever the printer does."""
    facts = {"sale_id": sale_id, "receipt_no": receipt_no, "tenant": "test", "store_id": "store-1",
             "sold_at": datetime.now(timezone.utc).isoformat(), "total_fen": 300,
             "lines": [{"name": "王芳的礼品", "unit_price_fen": 300}],
             "member": {"phone": "138****5678", "level": "gold"}}
    conn = sqlite3.connect(agent.home / "var" / "posedge.db", timeout=10)
    try:
        with conn:
            conn.execute("INSERT INTO print_jobs (kind, receipt_no, sale_id, printer, facts, created_at)"
                         " VALUES ('receipt', ?, ?, 'front', ?, ?)",
                         (receipt_no, sale_id, json.dumps(facts, ensure_ascii=False), facts["sold_at"]))
    finally:
        conn.close()


def test_receipt_that_cannot_be_rendered_is_loud_and_the_next_one_prints(agent_factory, tcp_printer):
    """GIVEN a queued job whose facts cannot be rendered WHEN the worker reaches it THEN the job is `failed`, a
    `receipt_failed` event reaches the POS, status counts it with the error, the log has one ERROR line without
    the receipt's personal data, and the sale after it prints."""
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        stream = SseReader(client)
        unreadable_job(agent, "broken-1", "BROKEN-0001")
        failed = stream.next_of("receipt_failed")
        assert client.post("/v1/sales", json=sale_body("after-1", 300)).status_code == 201
        [paper] = receipts(tcp_printer.wait_for(cut_count(1)))
        status = wait_until(lambda: printer_status(client)["printed"] == 1 and printer_status(client),
                            what="next printed")
        stream.close()
    assert (failed["receipt_no"], failed["sale_id"], failed["reason"]) == ("BROKEN-0001", "broken-1", "render_failed")
    assert failed["error"].startswith("render: TypeError at facts.py:")
    assert status["render_failures"] == 1 and status["state"] == "ready"
    assert status["last_render_error"]["receipt_no"] == "BROKEN-0001"
    assert status["last_render_error"]["error"] == failed["error"].removeprefix("render: ")
    assert receipt_no_of(paper) != "BROKEN-0001"
    assert job_states(agent)["broken-1"] == "failed"
    errors = [line for line in agent.log_text().splitlines() if "event=receipt_render_failed" in line]
    assert len(errors) == 1 and "ERROR" in errors[0] and "sale_id=broken-1" in errors[0]
    assert "王芳" not in agent.log_text() and "5678" not in agent.log_text()
