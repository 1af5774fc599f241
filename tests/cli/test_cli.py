"""The posedge command as store IT uses it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import AgentProcess, sale_body


def posedge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "posedge", *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_version() -> None:
    from posedge import __version__

    assert posedge("version").stdout.strip() == f"posedge {__version__}"


def test_help_names_every_command() -> None:
    out = posedge("--help").stdout
    for name in ("run", "check-config", "status", "version"):
        assert name in out
    assert "--config" in posedge("run", "--help").stdout


def test_status_asks_the_running_agent(agent_factory) -> None:
    agent: AgentProcess = agent_factory().start()
    with agent.client() as client:
        client.post("/v1/sales", json=sale_body("cli-1", 100))
    result = posedge("status", "--config", str(agent.config), "--json", cwd=agent.home)
    status = json.loads(result.stdout)
    assert result.returncode == 0
    # The sale, and the store's public key reported once at first start (receipts' "store_key").
    assert status["running"] is True and status["outbox"]["depth"] == 2


def test_status_reads_the_database_when_stopped(agent_factory) -> None:
    agent: AgentProcess = agent_factory().start()
    with agent.client() as client:
        client.post("/v1/sales", json=sale_body("cli-2", 100))
        client.post("/v1/sales", json=sale_body("cli-3", 100))
    agent.stop()
    result = posedge("status", "--config", str(agent.config), cwd=agent.home)
    assert result.returncode == 1
    assert "agent: not running" in result.stdout
    assert "outbox: 3 pending" in result.stdout  # two sales and the "store_key" event


def test_run_on_embedded_defaults_prints_api_token_and_how_to_stop(tmp_path: Path) -> None:
    """GIVEN an empty folder WHEN `posedge run` starts with no config THEN it says where things are."""
    proc = subprocess.Popen([sys.executable, "-m", "posedge", "run"], cwd=tmp_path, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "stop it with" in line or len(lines) > 50:
                break
    finally:
        proc.terminate()
        proc.wait(15)
    text = "".join(lines)
    if "cannot listen" in text:  # port 8765 taken on this machine: the message must say so
        assert "127.0.0.1:8765" in text
        return
    assert "http://127.0.0.1:8765/v1/health" in text
    assert str(tmp_path / "var" / "api-token") in text
    assert "Ctrl-C" in text
    assert (tmp_path / "var" / "posedge.db").exists()
    assert oct((tmp_path / "var" / "api-token").stat().st_mode & 0o777) == "0o600"
    assert proc.returncode == 0


def test_db_info_check_and_backup_while_the_agent_runs(agent_factory) -> None:
    agent: AgentProcess = agent_factory().start()
    with agent.client() as client:
        for n in range(3):
            client.post("/v1/sales", json=sale_body(f"db-{n}", 100))
    info = posedge("db", "--config", str(agent.config), "info", cwd=agent.home)
    check = posedge("db", "--config", str(agent.config), "check", cwd=agent.home)
    copy = agent.home / "backup.db"
    backup = posedge("db", "--config", str(agent.config), "backup", str(copy), cwd=agent.home)
    assert info.returncode == 0 and "sales" in info.stdout and "3 rows" in info.stdout
    assert check.returncode == 0 and check.stdout.strip().endswith("ok")
    assert backup.returncode == 0
    import sqlite3

    assert sqlite3.connect(copy).execute("SELECT count(*) FROM sales").fetchone()[0] == 3
    again = posedge("db", "--config", str(agent.config), "backup", str(copy), cwd=agent.home)
    assert again.returncode == 1 and "exists" in again.stdout


def test_db_check_reports_a_damaged_file(tmp_path: Path) -> None:
    db = tmp_path / "damaged.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 8192)
    config = tmp_path / "c.toml"
    config.write_text(f'[storage]\npath = "{db}"\n')
    result = posedge("db", "--config", str(config), "check", cwd=tmp_path)
    assert result.returncode == 1
    assert str(db) in result.stdout
