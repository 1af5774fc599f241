"""The print queue end to end: a real agent process, real HTTP, real SQLite, a printer on real TCP."""

from __future__ import annotations

import base64
import os
import sqlite3
import subprocess
import sys
import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from conftest import sale_body
from posedge.agent.receipts.claims import verify_claim
from scanners.conftest import SseReader

from .conftest import CLAIM_URL
from .escpos_reader import read_paper, split_jobs

SLOW = os.environ.get("POSEDGE_SLOW") == "1"
DUPLICATE = "** 可能重复打印 DUPLICATE? **"
COPY = "** 重印 COPY **"


def printer_config(port: int, timeout: float = 0.5) -> str:
    return f"""
[receipt]
claim_url = "{CLAIM_URL}"

[[printers]]
type = "network"
name = "front"
host = "127.0.0.1"
port = {port}
timeout_s = {timeout}
"""


def receipts(data: bytes) -> list:
    return [read_paper(job) for job in split_jobs(data)]


def receipt_no_of(paper) -> str:
    return next(line.split()[-1] for line in paper.lines if line.startswith("单号"))


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def cut_count(n: int):
    return lambda data: data.count(b"\x1dV") >= n


def printer_status(client) -> dict:
    return client.get("/v1/status").json()["receipts"]["printers"][0]


def public_key(jwk: dict) -> Ed25519PublicKey:
    raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
    return Ed25519PublicKey.from_public_bytes(raw)


def test_cash_sale_prints_a_receipt_with_verifiable_claim_and_drawer_kick(agent_factory, tcp_printer):
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("pos-1", 1250)).json()
        data = tcp_printer.wait_for(cut_count(1))
        [paper] = receipts(data)
        assert answer["receipt"]["print_job_id"] and answer["receipt"]["printer"] == "front"
        assert paper.text_lines()[0].strip() == "posedge 演示门店"
        assert receipt_no_of(paper) == answer["receipt_no"]
        item = paper.lines.index("品名       数量    单价     金额") + 1
        assert paper.lines[item : item + 2] == ["矿泉水        1   12.50    12.50", "  550ml"]
        assert paper.cuts == 1 and paper.drawer_pulses == [2]
        assert paper.barcodes == [answer["receipt_no"]]
        jwk = client.get("/v1/status").json()["receipts"]["store_key"]
        [qr] = paper.qr_codes
        claims = verify_claim(qr.removeprefix(CLAIM_URL), public_key(jwk))
        assert (claims["sub"], claims["amt"], claims["iss"]) == ("pos-1", 1250, "test/store-1")
        wait_until(lambda: printer_status(client)["printed"] == 1, what="job done")
        # Card only: no drawer pulse.
        wechat = {"method": "wechat", "amount_fen": 800, "reference": "4200009999998888"}
        card = sale_body("pos-2", 800, payments=[wechat])
        client.post("/v1/sales", json=card)
        second = receipts(tcp_printer.wait_for(cut_count(2)))[1]
        assert second.drawer_pulses == []
        assert any("微信支付 ****8888" in line for line in second.lines)
        assert "4200009999998888" not in tcp_printer.data().decode("latin-1")
    # The store's public key goes to HQ once, through the outbox.
    agent.stop()
    agent.start()
    agent.stop()
    db = sqlite3.connect(agent.home / "var" / "posedge.db")
    assert db.execute("SELECT count(*) FROM outbox WHERE kind = 'store_key'").fetchone()[0] == 1


def test_unplugged_printer_then_back_prints_every_receipt_in_order_once(agent_factory, tcp_printer):
    count = 300 if SLOW else 100
    tcp_printer.refuse()
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        numbers = [client.post("/v1/sales", json=sale_body(f"u-{i}", 100 + i)).json()["receipt_no"]
                   for i in range(count)]
        waiting = wait_until(lambda: printer_status(client)["state"] == "waiting" and printer_status(client),
                             what="waiting")
        assert waiting["problem"] == "printer_unavailable" and waiting["queued"] == count
        tcp_printer.accept()
        data = tcp_printer.wait_for(cut_count(count), timeout=60)
        wait_until(lambda: printer_status(client)["queued"] == 0, what="queue drained")
    papers = receipts(data)
    assert [receipt_no_of(p) for p in papers] == numbers  # all, in order, each once
    assert not any(DUPLICATE in "".join(p.lines) for p in papers)


def test_paper_out_waits_and_prints_when_paper_is_back(agent_factory, tcp_printer):
    tcp_printer.paper_out = True
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        client.post("/v1/sales", json=sale_body("p-1", 300))
        status = wait_until(lambda: printer_status(client)["problem"] == "paper_out" and printer_status(client),
                            what="paper_out")
        assert status["queued"] == 1 and tcp_printer.data() == b""
        cli = subprocess.run([sys.executable, "-m", "posedge", "status", "--config", str(agent.config)],
                             cwd=agent.home, capture_output=True, text=True, timeout=60)
        assert "printer front (network): waiting paper_out, 1 queued" in cli.stdout
        tcp_printer.paper_out = False
        [paper] = receipts(tcp_printer.wait_for(cut_count(1)))
        assert DUPLICATE not in [l.strip() for l in paper.lines]
        wait_until(lambda: printer_status(client)["state"] == "ready", what="ready")


def test_printer_dropping_mid_receipt_gets_it_again_marked_possibly_duplicated(agent_factory, tcp_printer):
    tcp_printer.close_after = 200
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("m-1", 300)).json()
        data = tcp_printer.wait_for(lambda d: d.count(b"\x1dV") >= 1 and len(d) > 200)
    resent = read_paper(data[200:])
    assert receipt_no_of(resent) == answer["receipt_no"]
    assert DUPLICATE in [l.strip() for l in resent.lines]


def test_reset_after_the_whole_job_was_written_is_a_failed_write_and_resent_marked(agent_factory, tcp_printer):
    """GIVEN a printer that drops the connection right after a whole receipt arrived WHEN the agent asks its
    status THEN the POS sees `printer_write_failed` (bytes went out), not `printer_unavailable`, and the
    receipt comes again marked possibly duplicated."""
    tcp_printer.close_after_job = True
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        stream = SseReader(client)
        answer = client.post("/v1/sales", json=sale_body("w-1", 300)).json()
        waiting = stream.next_of("printer")
        papers = receipts(tcp_printer.wait_for(cut_count(2)))
        stream.close()
    assert (waiting["state"], waiting["problem"], waiting["waiting_receipt"]) == (
        "waiting", "printer_write_failed", answer["receipt_no"])
    assert [receipt_no_of(p) for p in papers] == [answer["receipt_no"]] * 2
    assert DUPLICATE not in [l.strip() for l in papers[0].lines] and DUPLICATE in [l.strip() for l in papers[1].lines]


def test_paper_running_out_while_idle_shows_at_once_and_clears_on_recovery(agent_factory, tcp_printer):
    """GIVEN a network printer that printed a receipt and sits idle WHEN its paper runs out THEN, with no sale,
    the POS sees it on the event stream and in status (with last_error); paper back, the printer is ready
    again and last_error is cleared."""
    agent = agent_factory(printer_config(tcp_printer.port) + "idle_status_interval_s = 0.2\n").start()
    with agent.client() as client:
        client.post("/v1/sales", json=sale_body("i-1", 300))
        tcp_printer.wait_for(cut_count(1))
        wait_until(lambda: printer_status(client)["state"] == "ready", what="ready after the receipt")
        stream = SseReader(client)
        tcp_printer.paper_out = True
        out = stream.next_of("printer")
        waiting = printer_status(client)
        tcp_printer.paper_out = False
        back = stream.next_of("printer")
        ready = printer_status(client)
        stream.close()
    assert (out["state"], out["problem"]) == ("waiting", "paper_out") and "waiting_receipt" not in out
    assert (waiting["state"], waiting["problem"], waiting["queued"]) == ("waiting", "paper_out", 0)
    assert "paper_out" in waiting["last_error"]
    assert (back["state"], back["problem"]) == ("ready", None)
    assert (ready["state"], ready["problem"], ready["last_error"]) == ("ready", None, None)


def test_flooding_printer_holds_the_receipt_with_a_reason_and_prints_it_when_quiet(agent_factory, tcp_printer):
    """GIVEN a printer flooding bytes that are no status answers WHEN a sale is made THEN status says
    printer_status_garbled and nothing is sent; once the flood stops the receipt prints, once."""
    tcp_printer.flood = True
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("f-1", 300)).json()
        status = wait_until(
            lambda: printer_status(client)["problem"] == "printer_status_garbled" and printer_status(client),
            what="printer_status_garbled")
        assert status["queued"] == 1 and tcp_printer.data() == b""
        tcp_printer.flood = False
        [paper] = receipts(tcp_printer.wait_for(cut_count(1)))
        wait_until(lambda: printer_status(client)["state"] == "ready", what="ready")
    assert receipt_no_of(paper) == answer["receipt_no"] and DUPLICATE not in [l.strip() for l in paper.lines]


def test_crash_while_sending_is_resent_after_restart_marked_possibly_duplicated(agent_factory, tcp_printer):
    agent = agent_factory(printer_config(tcp_printer.port, timeout=5.0)).start()

    def crash(total: int) -> None:
        # The receipt is on its way: hold the status answer back and kill the agent right there.
        tcp_printer.on_bytes = None
        tcp_printer.silent = True
        agent.proc.kill()

    tcp_printer.on_bytes = crash
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("c-1", 300)).json()
    agent.proc.wait(10)
    db = sqlite3.connect(agent.home / "var" / "posedge.db")
    assert db.execute("SELECT state FROM print_jobs").fetchall() == [("sending",)]
    db.close()
    first_len = len(tcp_printer.data())
    tcp_printer.silent = False
    agent.start()
    data = tcp_printer.wait_for(lambda d: len(d) > first_len and d.count(b"\x1dV") >= 2)
    again = receipts(data[first_len:])[-1]
    assert receipt_no_of(again) == answer["receipt_no"]
    assert DUPLICATE in [l.strip() for l in again.lines]


def test_reprint_is_a_copy_without_drawer_kick(agent_factory, tcp_printer):
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("r-1", 300)).json()
        tcp_printer.wait_for(cut_count(1))
        reprint = client.post(f"/v1/receipts/{answer['receipt_no']}/reprint")
        assert reprint.status_code == 202 and reprint.json()["copy"] is True
        copy = receipts(tcp_printer.wait_for(cut_count(2)))[1]
        assert COPY in [l.strip() for l in copy.lines] and copy.drawer_pulses == []
        assert receipt_no_of(copy) == answer["receipt_no"]
        missing = client.post("/v1/receipts/20990101-9999/reprint")
        assert missing.status_code == 404 and missing.json()["code"] == "not_found"


def test_drawer_open_kicks_now_or_says_why_not(agent_factory, tcp_printer):
    agent = agent_factory(printer_config(tcp_printer.port)).start()
    with agent.client() as client:
        assert client.post("/v1/drawer/open").json()["opened"] is True
        data = tcp_printer.wait_for(lambda d: b"\x1bp" in d)
        assert read_paper(data).drawer_pulses == [2]
        tcp_printer.refuse()
        refused = client.post("/v1/drawer/open")
        assert refused.status_code == 503 and refused.json()["code"] == "printer_unavailable"


def test_default_file_printer_keeps_bytes_and_png_and_previews_work(agent_factory):
    agent = agent_factory().start()
    name = "🍎超长商品名称" * 8 + "\u202eevil"
    with agent.client() as client:
        body = sale_body("f-1", 990)
        body["lines"][0]["name"] = name
        answer = client.post("/v1/sales", json=body).json()
        number = answer["receipt_no"]
        bin_path = agent.home / "var" / "receipts" / f"{number}.bin"
        wait_until(lambda: bin_path.exists() and (bin_path.with_suffix(".png")).exists(), what="receipt files")
        paper = read_paper(bin_path.read_bytes())
        assert receipt_no_of(paper) == number and paper.cuts == 1
        item = paper.lines.index("品名       数量    单价     金额") + 1
        assert paper.lines[item] == "?超长商品     1    9.90     9.90"
        printed = "".join(line.strip() for line in paper.lines[item : item + 30])
        assert "名称?超长" in printed and printed.count("?evil") == 1 and "\u202e" not in printed
        png = client.get(f"/v1/receipts/{number}.png")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        assert png.content.startswith(b"\x89PNG")
        assert client.get("/v1/receipts/20990101-0001.png").status_code == 404
        job = client.post(f"/v1/receipts/{number}/reprint").json()["print_job_id"]
        copy_path = bin_path.with_name(f"{number}-copy-{job}.bin")
        wait_until(copy_path.exists, what="the copy's file")
        assert "** 重印 COPY **" in [l.strip() for l in read_paper(copy_path.read_bytes()).lines]
        assert read_paper(bin_path.read_bytes()).cuts == 1  # the original stays as it was
    out = agent.home / "preview.png"
    cli = subprocess.run(
        [sys.executable, "-m", "posedge", "receipt", "preview", "f-1", "-o", str(out), "--config", str(agent.config)],
        cwd=agent.home, capture_output=True, text=True, timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    missing = subprocess.run(
        [sys.executable, "-m", "posedge", "receipt", "preview", "nope", "-o", str(out), "--config", str(agent.config)],
        cwd=agent.home, capture_output=True, text=True, timeout=60,
    )
    assert missing.returncode == 1 and "no receipt for sale 'nope'" in missing.stderr


def test_usb_printer_without_pyusb_is_off_with_a_reason_and_sales_go_on(agent_factory):
    try:
        import usb  # noqa: F401
        have_pyusb = True
    except ImportError:
        have_pyusb = False
    usb_printer = '[[printers]]\ntype = "usb"\nname = "till-usb"\nvendor_id = 0x0416\nproduct_id = 0x5011\n'
    agent = agent_factory(usb_printer).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("usb-1", 300))
        assert answer.status_code == 201 and answer.json()["receipt"]["printer"] == "till-usb"
        [printer] = client.get("/v1/status").json()["receipts"]["printers"]
    if have_pyusb:
        assert printer["state"] != "disabled"
    else:
        assert printer["state"] == "disabled" and "pyusb" in printer["reason"]


def test_silent_printer_holds_the_job_until_it_answers_again(agent_factory, tcp_printer):
    tcp_printer.silent = True
    agent = agent_factory(printer_config(tcp_printer.port, timeout=0.3)).start()
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("s-1", 300)).json()
        wait_until(lambda: printer_status(client)["problem"] == "printer_status_timeout", what="status timeout")
        assert tcp_printer.data() == b""  # nothing is sent to a printer that does not answer
        tcp_printer.silent = False
        [paper] = receipts(tcp_printer.wait_for(cut_count(1)))
    assert receipt_no_of(paper) == answer["receipt_no"]
    assert DUPLICATE not in [l.strip() for l in paper.lines]
