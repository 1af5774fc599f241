"""Shared fixtures: real agent processes on free ports, real SQLite files, real HTTP."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
from hypothesis import settings

SLOW = os.environ.get("POSEDGE_SLOW") == "1"
# Tests never assert timings, Hypothesis's per-example deadline included: on a loaded CI machine an example that
# takes 200 ms is not a failure.
settings.register_profile("posedge", deadline=None)
settings.load_profile("posedge")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux: 32768), where bind(0) and outgoing connections
    take their ports."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_PORTS_LOW = 20000
_handed_out: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1 for a server the test starts (agent, broker, HQ, PostgreSQL), chosen below
    the kernel's ephemeral range. A port from bind(0) is in that range, where the kernel also picks the
    source port of every outgoing connection and every other process's bind(0): under load one of those
    took it between this call and the server's bind ("Address already in use"), or a client reconnecting
    to a stopped broker connected to itself on it (TCP simultaneous open), and waited for a CONNACK that
    never came. Below that range only tests choose ports. Each pytest-xdist worker chooses in its own
    slice, and a process never hands a port out twice."""
    low, high = _PORTS_LOW, _ephemeral_low()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    if high - low >= 256 * count:
        span = (high - low) // count
        low, high = low + index * span, low + (index + 1) * span
        for _ in range(500):
            port = random.randrange(low, high)
            if port in _handed_out:
                continue
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room below the ephemeral range on this machine
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(home: Path, port: int, extra: str = "", storage: Path | None = None, top: str = "",
                 storage_keys: str = "", api_keys: str = "", mqtt_keys: str = "enabled = false") -> Path:
    """A config for a test agent living in `home`: no terminal scanner, no broker connection (unless
    `mqtt_keys`, the keys of [mqtt], say otherwise).
    `top`: top-level keys (before the first table), e.g. "printers = []"; `storage_keys`: more keys
    of [storage]; `api_keys`: more keys of [api]; `extra`: tables at the end."""
    storage = storage or home / "var" / "posedge.db"
    config = home / "posedge.toml"
    config.write_text(
        f"""scanners = []
{top}

[store]
tenant = "test"
id = "store-1"

[storage]
path = "{storage}"
{storage_keys}

[api]
listen = "127.0.0.1:{port}"
token_file = "{home / 'var' / 'api-token'}"
cors_origins = ["http://pos.local:3000"]
{api_keys}

[mqtt]
{mqtt_keys}
{extra}
""",
        encoding="utf-8",
    )
    return config


class AgentProcess:
    """`posedge run` as a real process, with the controls tests need (start, kill -9, stop)."""

    def __init__(self, home: Path, extra_config: str = "", storage: Path | None = None, top_config: str = "",
                 storage_keys: str = "", api_keys: str = "", mqtt_keys: str = "enabled = false") -> None:
        self.home = home
        self.port = free_port()
        self.config = write_config(home, self.port, extra_config, storage, top_config, storage_keys, api_keys,
                                   mqtt_keys)
        self.proc: subprocess.Popen | None = None
        self.log = home / "agent.log"
        self.url = f"http://127.0.0.1:{self.port}"
        self.env: dict[str, str] | None = None  # the agent's environment; None: the test's own
        self.args: list[str] = []  # more arguments of `posedge run`

    def start(self, deadline_s: float = 30.0) -> "AgentProcess":
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "posedge", "run", "--config", str(self.config), *self.args],
            cwd=self.home, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT, env=self.env,
        )
        handle.close()
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                httpx.get(f"{self.url}/v1/health", timeout=1.0)
                return self
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError(f"agent did not answer within {deadline_s} s:\n{self.log_text()}")

    @property
    def token(self) -> str:
        return (self.home / "var" / "api-token").read_text().strip()

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=10.0, **kwargs)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"agent did not stop on SIGTERM:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def make(extra_config: str = "", storage: Path | None = None, home: Path | None = None,
             top_config: str = "", storage_keys: str = "", api_keys: str = "",
             mqtt_keys: str = "enabled = false") -> AgentProcess:
        agent_home = home or tmp_path / f"agent{len(started)}"
        agent_home.mkdir(parents=True, exist_ok=True)
        agent = AgentProcess(agent_home, extra_config, storage, top_config, storage_keys, api_keys, mqtt_keys)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


@pytest.fixture(scope="module")
def running_agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    home = tmp_path_factory.mktemp("agent")
    agent = AgentProcess(home).start()
    yield agent
    agent.stop()


def sale_body(sale_id: str | None = None, amount: int = 300, **extra: Any) -> dict[str, Any]:
    """A valid one-line cash sale of `amount` fen."""
    body: dict[str, Any] = {
        "lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "unit_price_fen": amount}],
        "payments": [{"method": "cash", "amount_fen": amount}],
    }
    if sale_id is not None:
        body["sale_id"] = sale_id
    body.update(extra)
    return body


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real, small filesystem (tmpfs, 2 MiB) that fills up: ENOSPC as a full disk gives it."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
