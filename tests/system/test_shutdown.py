"""SIGTERM while tills are selling: every acknowledged sale is on disk, print jobs settled, exit 0 in time."""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from posedge.agent.cli.run import STOP_BOUND_S
from tests.conftest import sale_body

TILLS = 4
GRACE_S = 3


def till(agent: Any, acknowledged: list[str], stop: threading.Event, errors: list[str]) -> None:
    """Posts sales one after another, each on a new connection, until the agent stops answering."""
    while not stop.is_set():
        sale_id = f"sale-{uuid.uuid4()}"
        try:
            answer = httpx.post(f"{agent.url}/v1/sales", json=sale_body(sale_id),
                                headers={"Authorization": f"Bearer {agent.token}"}, timeout=10)
        except httpx.TransportError:
            time.sleep(0.01)  # refused or cut at shutdown: not acknowledged, the POS retries later
            continue
        if 200 <= answer.status_code < 300:
            acknowledged.append(sale_id)
        elif answer.status_code != 503:
            errors.append(f"{answer.status_code} {answer.text}")


def test_sigterm_while_selling_keeps_every_acknowledged_sale_and_exits_0_in_time(agent_factory: Any) -> None:
    """GIVEN a real agent and four tills posting sales concurrently WHEN SIGTERM arrives mid-stream
    THEN it exits 0 within [api] shutdown_grace_s plus its stop bound, every sale answered 2xx is in the
    database, and no print job is left in the `sending` state."""
    agent = agent_factory(api_keys=f"shutdown_grace_s = {GRACE_S}").start()
    acknowledged: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    tills = [threading.Thread(target=till, args=(agent, acknowledged, stop, errors)) for _ in range(TILLS)]
    for thread in tills:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(acknowledged) >= 20, agent.log_text()
        sent_at = time.monotonic()
        agent.proc.send_signal(15)
        code = agent.proc.wait(GRACE_S + STOP_BOUND_S + 10)
        took = time.monotonic() - sent_at
    finally:
        stop.set()
        for thread in tills:
            thread.join(15)
    assert code == 0, agent.log_text()
    assert took < GRACE_S + STOP_BOUND_S, took
    assert not errors, errors[:3]

    conn = sqlite3.connect(f"file:{agent.home / 'var' / 'posedge.db'}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in conn.execute("SELECT sale_id FROM sales")}
        sending = conn.execute("SELECT count(*) FROM print_jobs WHERE state = 'sending'").fetchone()[0]
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()
    missing = [s for s in acknowledged if s not in stored]
    assert not missing, f"{len(missing)} acknowledged sales lost: {missing[:3]}"
    assert sending == 0
    assert integrity == "ok"
    log = agent.log_text()
    assert "event=agent_stopping" in log and "event=agent_stopped" in log


def log_index(log: str, needle: str) -> int:
    at = log.find(needle)
    assert at >= 0, f"{needle!r} not in the log:\n{log}"
    return at


def test_sigterm_stops_scans_first_answers_the_sale_in_flight_settles_a_stuck_print_job_then_closes(
        agent_factory: Any, tmp_path: Path) -> None:
    """GIVEN a serial scanner on a pseudo-terminal, a TCP printer that takes a receipt's bytes and then never
    answers (a job stuck mid-print), and a sale whose body is still arriving WHEN SIGTERM arrives THEN, in this
    order: no scan written after the stop request is acted on (the one before was); no new connection is
    taken while the sale in flight gets its 201 and is on disk; the stuck job is marked pending and possibly
    duplicated (not left `sending`); the printer is closed; the agent exits 0. At the next start the job is
    printed once more, marked as a possible duplicate."""
    from tests.receipts.printer_server import TcpPrinter
    from tests.scanners.conftest import Pty
    from tests.scanners.test_events_api import wait_connected

    printer, pair = TcpPrinter().start(), Pty(tmp_path / "by-id-till")
    try:
        agent = agent_factory(f"""
[[scanners]]
type = "serial"
name = "till-1"
port = "{pair.link}"

[[printers]]
type = "network"
name = "front"
host = "127.0.0.1"
port = {printer.port}
timeout_s = 60
""", api_keys="shutdown_grace_s = 30")
        agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
        agent.start()
        wait_connected(agent, "till-1")
        pair.write(b"6901234567892\r\n")
        deadline = time.monotonic() + 20
        while agent.log_text().count("event=scan id=") < 1:
            assert time.monotonic() < deadline, agent.log_text()
            time.sleep(0.02)

        printer.on_bytes = lambda total: setattr(printer, "silent", True)  # bytes taken, then no status answer
        with agent.client() as client:
            answer = client.post("/v1/sales", json=sale_body("sale-stuck"))
        assert answer.status_code == 201, answer.text
        printer.wait_for(lambda data: b"\x1dV" in data)

        body = json.dumps(sale_body("sale-in-flight")).encode()
        in_flight = socket.create_connection(("127.0.0.1", agent.port))
        in_flight.sendall(b"POST /v1/sales HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                          b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % (agent.port, agent.token.encode(), len(body)) + body[:10])
        time.sleep(0.2)  # let the server take the request in (not a timing assertion: it only orders events)
        agent.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while "event=api_closing" not in agent.log_text():
            assert time.monotonic() < deadline, agent.log_text()
            time.sleep(0.02)
        pair.write(b"4006381333931\r\n")  # after the stop request: never acted on
        refused = False
        while not refused and time.monotonic() < deadline:  # the listening socket closes right after the log line
            try:
                socket.create_connection(("127.0.0.1", agent.port), timeout=1).close()
                time.sleep(0.02)
            except ConnectionRefusedError:
                refused = True
        assert refused, "a new connection was still taken while stopping"
        in_flight.sendall(body[10:])
        reply = in_flight.recv(65536)
        in_flight.close()
        assert reply.startswith(b"HTTP/1.1 201"), reply[:200]
        code = agent.proc.wait(STOP_BOUND_S + 10)
    finally:
        printer.stop()
        pair.unplug()
    log = agent.log_text()
    assert code == 0, log
    assert log.count("event=scan id=") == 1, log  # the scan before the stop; none after
    order = [log_index(log, needle) for needle in ("event=stop_requested", "event=api_closing",
                                                   "event=print_job_interrupted printer=front jobs=1",
                                                   "event=agent_stopped")]
    assert order == sorted(order)

    conn = sqlite3.connect(f"file:{agent.home / 'var' / 'posedge.db'}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in conn.execute("SELECT sale_id FROM sales")}
        jobs = conn.execute("SELECT sale_id, state, possibly_duplicated FROM print_jobs ORDER BY job_id").fetchall()
    finally:
        conn.close()
    assert {"sale-stuck", "sale-in-flight"} <= stored
    assert ("sale-stuck", "pending", 1) in jobs and not [j for j in jobs if j[1] == "sending"]

    again = TcpPrinter()
    again.port = printer.port
    again.start()
    try:
        agent.start()
        from tests.receipts.escpos_reader import read_paper, split_jobs
        from tests.receipts.test_queue import DUPLICATE

        data = again.wait_for(lambda data: data.count(b"\x1dV") >= 2)  # the stuck receipt, the in-flight sale's
        papers = [[line.strip() for line in read_paper(job).lines] for job in split_jobs(data)]
        marked = [lines for lines in papers if DUPLICATE in lines]
        assert len(marked) == 1
    finally:
        agent.stop()
        again.stop()


def test_sigterm_flushes_the_sync_window_bounded_and_leaves_a_fresh_offline_status_retained(
        agent_factory: Any, broker_factory: Any) -> None:
    """GIVEN an agent connected to a real broker, with no HQ to ack (so a batch stays in flight) WHEN sales
    are made and SIGTERM arrives THEN the link waits for the window's acks (bounded), says so, publishes the
    retained offline status with the state at the stop (its outbox depth counts the sales: the last will,
    set at connect, could not), disconnects, and the agent exits 0."""
    from tests.sync.conftest import sync_config, wait_for
    from tests.sync.test_status_and_garbage import Watcher

    broker = broker_factory().start()
    agent = agent_factory(mqtt_keys=sync_config(broker)).start()
    watcher = Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        online = watcher.next_with("online")
        with agent.client() as client:
            for n in range(3):
                assert client.post("/v1/sales", json=sale_body(f"sale-sync-{n}")).status_code == 201
            wait_for(lambda: client.get("/v1/status").json()["sync"].get("in_flight_batches"), 20,
                     "a batch in flight")
            depth = client.get("/v1/status").json()["outbox"]["depth"]
        assert depth >= 3 and online["outbox_depth"] < depth
        agent.proc.send_signal(signal.SIGTERM)
        code = agent.proc.wait(STOP_BOUND_S + 10)
    finally:
        watcher.close()
    log = agent.log_text()
    assert code == 0, log
    assert log_index(log, "event=sync_flush_incomplete batches=1") < log_index(log, "event=agent_stopped")
    late = Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        offline = late.next_with("offline")
    finally:
        late.close()
    assert offline["outbox_depth"] == depth
