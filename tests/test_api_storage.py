"""Storage trouble seen through the API: a clear answer, nothing partial, health keeps answering."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import httpx

from conftest import sale_body


def test_full_disk_answers_507_keeps_health_and_recovers(agent_factory, small_disk: Path) -> None:
    agent = agent_factory(storage=small_disk / "posedge.db").start()
    filler = small_disk / "filler"
    stats = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 48 * 1024))
    answers = []
    with agent.client() as client:
        for n in range(400):
            body = sale_body(f"full-{n}", 100)
            body["lines"][0]["name"] = "大" * 120
            answer = client.post("/v1/sales", json=body)
            answers.append((body["sale_id"], answer.status_code))
            if answer.status_code == 507:
                assert answer.json()["code"] == "storage_full"
                assert str(small_disk / "posedge.db") in answer.json()["message"]
                break
        assert answers[-1][1] == 507, "the disk never filled"
        health = httpx.get(f"{agent.url}/v1/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert client.get("/v1/status").json()["storage"]["state"] == "storage_full"

        filler.unlink()
        long_named = {**sale_body()["lines"][0], "name": "大" * 120, "unit_price_fen": 100}
        retried = client.post("/v1/sales", json={**sale_body(answers[-1][0], 100), "lines": [long_named]})
        assert retried.status_code == 201
        assert httpx.get(f"{agent.url}/v1/health").status_code == 200
    agent.stop()
    conn = sqlite3.connect(small_disk / "posedge.db")
    recorded = {row[0] for row in conn.execute("SELECT sale_id FROM sales")}
    lines = conn.execute("SELECT count(*) FROM sale_lines").fetchone()[0]
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert recorded == {sale_id for sale_id, status in answers[:-1]} | {answers[-1][0]}
    assert lines == len(recorded)  # no partial sale: every sale has its line, nothing more


def test_corrupt_database_keeps_the_api_up_and_the_file_untouched(agent_factory, tmp_path: Path) -> None:
    db = tmp_path / "broken" / "posedge.db"
    db.parent.mkdir()
    garbage = b"this is not sqlite " * 4000
    db.write_bytes(garbage)
    agent = agent_factory(storage=db).start()
    health = httpx.get(f"{agent.url}/v1/health")
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body("c-1", 100))
    agent.stop()
    assert health.status_code == 503
    assert health.json()["problems"][0]["code"] == "storage_corrupt"
    assert (answer.status_code, answer.json()["code"]) == (503, "storage_corrupt")
    assert "will not write to it" in answer.json()["message"]
    assert db.read_bytes() == garbage
