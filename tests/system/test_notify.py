"""systemd's notify protocol against a real agent: a real unix datagram socket plays systemd."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from posedge.agent.system import notify as sd

DEADLINE_S = 30.0


class NotifySocket:
    """What systemd listens on: a datagram socket; collects every message with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, list[str]]] = []

    def poll(self) -> list[list[str]]:
        got = []
        while True:
            try:
                data = self.sock.recv(4096)
            except (socket.timeout, BlockingIOError):
                return got
            lines = data.decode().split("\n")
            self.messages.append((time.monotonic(), lines))
            got.append(lines)

    def wait_for(self, line: str, deadline_s: float = DEADLINE_S) -> list[str]:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            for lines in self.poll():
                if line in lines:
                    return lines
        raise AssertionError(f"no {line} within {deadline_s} s; got {[m for _, m in self.messages]}")

    def count(self, line: str, since: float) -> int:
        return sum(1 for at, lines in self.messages if at >= since and line in lines)

    def collect(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def start_unready(agent: Any, env: dict[str, str]) -> None:
    """Start `posedge run` without AgentProcess.start's health polling: the test watches readiness itself."""
    import subprocess
    import sys

    handle = open(agent.log, "ab")
    agent.proc = subprocess.Popen([sys.executable, "-m", "posedge", "run", "--config", str(agent.config)],
                                  cwd=agent.home, stdin=subprocess.DEVNULL, stdout=handle,
                                  stderr=subprocess.STDOUT, env=env)
    handle.close()


def test_notify_speaks_to_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    """GIVEN NOTIFY_SOCKET names an abstract socket ('@...') WHEN notify is called THEN the datagram arrives."""
    name = f"posedge-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(b"\0" + name.encode())
        listener.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd.notify("READY=1", "STATUS=ok")
        assert listener.recv(4096) == b"READY=1\nSTATUS=ok"


def test_notify_without_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sd.watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert sd.watchdog_interval_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.watchdog_interval_s() == 1.5
    monkeypatch.setenv("WATCHDOG_USEC", "0")
    assert sd.watchdog_interval_s() is None


def test_ready_after_the_api_answers_watchdog_pings_stop_when_the_loop_stalls_and_stopping_on_sigterm(
        agent_factory: Any, notify_socket: NotifySocket, tmp_path: Path) -> None:
    """GIVEN a real agent under NOTIFY_SOCKET with WATCHDOG_USEC=0.4 s
    WHEN it starts THEN READY=1 arrives, and the API answers at that moment;
    WATCHDOG=1 pings arrive; WHEN the loop is stalled (debug hook) THEN pings stop and resume after;
    WHEN SIGTERM THEN STOPPING=1 arrives and the agent exits 0."""
    stall = tmp_path / "stall"
    agent = agent_factory()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000",
           sd.STALL_FILE_ENV: str(stall)}
    env.pop("WATCHDOG_PID", None)
    start_unready(agent, env)

    ready = notify_socket.wait_for("READY=1")
    assert httpx.get(f"{agent.url}/v1/health", timeout=5).status_code == 200  # listening when READY came
    assert any(line.startswith("STATUS=serving") for line in ready)

    started = time.monotonic()
    notify_socket.collect(2.0)
    assert notify_socket.count("WATCHDOG=1", started) >= 3, notify_socket.messages

    stall.touch()
    _wait_for_log(agent, "event=debug_loop_stall")
    notify_socket.poll()  # a ping sent just before the stall took hold
    stalled_at = time.monotonic()
    notify_socket.collect(1.5)  # nearly four intervals
    assert notify_socket.count("WATCHDOG=1", stalled_at) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{agent.url}/v1/health", timeout=0.5)  # the loop really is stuck

    stall.unlink()
    notify_socket.wait_for("WATCHDOG=1", deadline_s=5)

    assert agent.proc is not None
    agent.proc.send_signal(15)
    notify_socket.wait_for("STOPPING=1", deadline_s=10)
    assert agent.proc.wait(20) == 0, agent.log_text()


def _wait_for_log(agent: Any, text: str) -> None:
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        if text in agent.log_text():
            return
        time.sleep(0.05)
    raise AssertionError(f"{text} not logged:\n{agent.log_text()}")
