"""Durability: sales acknowledged with a 2xx survive SIGKILL at random moments, exactly once."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import SLOW, AgentProcess, sale_body

KILLS = 12 if SLOW else 4


def post_until_killed(agent: AgentProcess, prefix: str, acked: dict[str, dict], stop: threading.Event) -> None:
    """A POS posting sales in a loop, retrying each until the agent answers or goes away."""
    n = 0
    client = httpx.Client(base_url=agent.url, headers={"Authorization": f"Bearer {agent.token}"}, timeout=5.0)
    try:
        while not stop.is_set():
            sale_id = f"{prefix}-{n:05d}"
            try:
                answer = client.post("/v1/sales", json=sale_body(sale_id, 100 + n))
            except httpx.TransportError:
                return  # killed mid-request: not acknowledged, the POS would retry later
            assert answer.status_code in (200, 201), answer.text
            acked[sale_id] = answer.json()
            n += 1
    finally:
        client.close()


@pytest.mark.parametrize("tills, printers", [
    (3, ""),  # several tills: sales share commits in the writer thread; the default printer prints each
    (1, "printers = []"),  # one till, nothing else writing: its sales commit on the loop (inline)
], ids=["three-tills-group-commit", "one-till-inline-commit"])
def test_acknowledged_sales_survive_sigkill_exactly_once(agent_factory, tmp_path: Path, tills: int,
                                                         printers: str) -> None:
    home = tmp_path / "crashy"
    # A slow CI disk must not turn the loop's commits off: any COMMIT under 50 ms counts as fast here.
    agent = agent_factory(home=home, top_config=printers, storage_keys="inline_max_ms = 50" if tills == 1 else "")
    rng = random.Random(20261123)
    acked: dict[str, dict] = {}
    inline_commits = 0
    for round_no in range(KILLS):
        agent.start()
        stop = threading.Event()
        posters = [threading.Thread(target=post_until_killed, args=(agent, f"r{round_no}p{p}", acked, stop))
                   for p in range(tills)]
        for t in posters:
            t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        inline_commits += inline_commits_so_far(agent)
        agent.kill()
        stop.set()
        for t in posters:
            t.join(10)
        assert_every_acknowledged_sale_once(home / "var" / "posedge.db", acked)

    agent.start()  # retries after restart: identical bodies replay, nothing doubles
    with agent.client() as client:
        for sale_id in list(acked)[:: max(1, len(acked) // 20)]:
            n = int(sale_id.rsplit("-", 1)[1])
            replay = client.post("/v1/sales", json=sale_body(sale_id, 100 + n))
            assert replay.status_code == 200 and replay.json() == acked[sale_id]
    agent.stop()
    assert len(acked) > KILLS  # the test did exercise the path
    if tills == 1:
        assert inline_commits > 0  # and the loop's own commits were among those killed
    assert_every_acknowledged_sale_once(home / "var" / "posedge.db", acked)


def inline_commits_so_far(agent: AgentProcess) -> int:
    try:
        with agent.client() as client:
            return client.get("/v1/status").json()["storage"]["commits"]["inline"]
    except httpx.HTTPError:
        return 0


def assert_every_acknowledged_sale_once(db: Path, acked: dict[str, dict]) -> None:
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = dict(conn.execute("SELECT sale_id, receipt_no FROM sales").fetchall())
        events = conn.execute("SELECT key, count(*) FROM outbox WHERE kind = 'sale' GROUP BY key").fetchall()
    finally:
        conn.close()
    missing = [s for s in acked if s not in rows]
    assert not missing, f"acknowledged but lost: {missing[:5]}"
    assert all(rows[s] == body["receipt_no"] for s, body in acked.items())
    assert all(count == 1 for _, count in events)
    assert len(events) == len(rows)
