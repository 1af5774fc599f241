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
    assert status["running"] is True and status["outbox"]["depth"] == 1


def test_status_reads_the_database_when_stopped(agent_factory) -> None:
    agent: AgentProcess = agent_factory().start()
    with agent.client() as client:
        client.post("/v1/sales", json=sale_body("cli-2", 100))
        client.post("/v1/sales", json=sale_body("cli-3", 100))
    agent.stop()
    result = posedge("status", "--config", str(agent.config), cwd=agent.home)
    assert result.returncode == 1
    assert "agent: not running" in result.stdout
    assert "outbox: 2 pending" in result.stdout


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
