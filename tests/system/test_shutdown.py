"""SIGTERM while tills are selling: every acknowledged sale is on disk, print jobs settled, exit 0 in time."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
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
