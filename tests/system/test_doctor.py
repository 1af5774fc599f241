"""`posedge doctor` against real parts: a pty serial scanner, a TCP printer listener, mosquitto (open, and
one wanting a password), a real database and a corrupted one, an HTTP server's Date header."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from posedge.agent.store.writer import StoreWriter
from tests.conftest import free_port
from tests.sync.conftest import Broker


class PasswordBroker(Broker):
    """mosquitto that accepts user `store` with password `right` only."""

    def _configure(self, persistence: bool) -> list[str]:
        passwords = self.home / "passwords"
        subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "store", "right"], check=True,
                       capture_output=True)
        passwords.chmod(0o600)
        conf = self.home / "mosquitto.conf"  # user root: it reads the password file in the 0700 temp dir
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                        "user root\npersistence false\nlog_dest stderr\nlog_type error\n", encoding="utf-8")
        return ["mosquitto", "-c", str(conf)]


@pytest.fixture
def pty_port() -> Iterator[str]:
    controller, device = os.openpty()
    yield os.ttyname(device)
    os.close(controller)
    os.close(device)


@pytest.fixture
def printer_listener() -> Iterator[int]:
    """A TCP listener where a network printer would be: accepts and closes."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    server.close()


def date_server(offset_s: float) -> tuple[ThreadingHTTPServer, str]:
    """An HTTP server whose Date header is `offset_s` away from this PC's clock."""
    import time

    class Handler(BaseHTTPRequestHandler):
        def date_time_string(self, timestamp: float | None = None) -> str:
            return formatdate(time.time() + offset_s, usegmt=True)

        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def write_config(home: Path, scanner_port: str, printer_port: int, mqtt: str) -> Path:
    config = home / "posedge.toml"
    config.write_text(f"""
[[scanners]]
type = "serial"
name = "counter"
port = "{scanner_port}"

[[printers]]
type = "network"
name = "front"
host = "127.0.0.1"
port = {printer_port}

[[printers]]
type = "file"
name = "copies"
path = "{home / 'receipts'}"

[storage]
path = "{home / 'var' / 'posedge.db'}"

[mqtt]
{mqtt}
""", encoding="utf-8")
    return config


def doctor(config: Path, *more: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run([sys.executable, "-m", "posedge", "doctor", "--config", str(config), "--json", *more],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def finding(report: dict[str, Any], starts: str) -> dict[str, Any]:
    matches = [c for c in report["checks"] if c["check"].startswith(starts)]
    assert len(matches) == 1, (starts, report["checks"])
    return matches[0]


def make_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter(path)
    assert writer.start() is None
    writer.stop()


def corrupt(path: Path) -> None:
    """Real damage: a b-tree page overwritten in the middle, as a failing disk leaves it."""
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE filler (a INTEGER PRIMARY KEY, b TEXT)")
    conn.executemany("INSERT INTO filler (b) VALUES (?)", [(f"row-{i}" * 5,) for i in range(3000)])
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = len(data) // 4096 - 4
    data[page * 4096 + 100:page * 4096 + 400] = b"\xab" * 300
    path.write_bytes(bytes(data))


def test_all_well_exits_0(tmp_path: Path, pty_port: str, printer_listener: int,
                          broker_factory: Callable[..., Broker]) -> None:
    """GIVEN a pty scanner, a listening TCP printer, a writable receipts folder, an open mosquitto and a
    sound database THEN every check is ok (or plainly not checked) and doctor exits 0."""
    broker = broker_factory(persistence=False).start()
    config = write_config(tmp_path, pty_port, printer_listener, f'url = "{broker.url}"')
    make_database(tmp_path / "var" / "posedge.db")
    server, url = date_server(0)
    try:
        code, report = doctor(config, "--time-url", url)
    finally:
        server.shutdown()
    assert code == 0, report
    assert finding(report, "scanner counter")["says"] == "opens"
    assert finding(report, "printer front")["says"] == "connects"
    assert finding(report, "printer copies")["ok"] is True
    assert finding(report, "broker")["says"] == "reachable, connection accepted"
    assert finding(report, "clock")["ok"] is True
    assert finding(report, "database")["says"] == "quick_check ok"
    assert finding(report, "disk")["ok"] is True
    assert report["problems"] == 0


def test_problems_are_named_with_their_fix_and_exit_1(tmp_path: Path, printer_listener: int,
                                                      broker_factory: Callable[..., Broker]) -> None:
    """GIVEN a scanner that is not plugged in, a printer port nobody listens on, a broker refusing our
    password, a clock an hour off and a corrupted database THEN each is a problem with a fix; exit 1."""
    home = tmp_path / "pw-broker"
    home.mkdir()
    broker = PasswordBroker(home, persistence=False).start()
    try:
        config = write_config(tmp_path, "/dev/posedge/scanner-not-plugged", free_port(),
                              f'url = "{broker.url}"\nusername = "store"\npassword = "wrong"')
        database = tmp_path / "var" / "posedge.db"
        make_database(database)
        corrupt(database)
        server, url = date_server(3600)
        try:
            code, report = doctor(config, "--time-url", url)
        finally:
            server.shutdown()
    finally:
        broker.kill()
    assert code == 1
    scanner = finding(report, "scanner counter")
    assert scanner["ok"] is False and "does not exist" in scanner["says"] and scanner["fix"]
    printer = finding(report, "printer front")
    assert printer["ok"] is False and "does not connect" in printer["says"] and "ping 127.0.0.1" in printer["fix"]
    mqtt = finding(report, "broker")
    assert mqtt["ok"] is False and "refused" in mqtt["says"] and "password" in mqtt["fix"]
    clock = finding(report, "clock")
    assert clock["ok"] is False and "behind HQ" in clock["says"] and "timedatectl" in clock["fix"]
    db = finding(report, "database")
    assert db["ok"] is False and db["says"].startswith("damaged:") and "backup" in db["fix"]
    assert report["problems"] >= 5


def test_right_password_is_accepted(tmp_path: Path) -> None:
    home = tmp_path / "pw"
    home.mkdir()
    broker = PasswordBroker(home, persistence=False).start()
    try:
        config = tmp_path / "posedge.toml"
        config.write_text(f'scanners = []\nprinters = []\n[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
                          f'[mqtt]\nurl = "{broker.url}"\nusername = "store"\npassword_file = "{home / "pass"}"\n',
                          encoding="utf-8")
        (home / "pass").write_text("right\n", encoding="utf-8")
        code, report = doctor(config)
    finally:
        broker.kill()
    assert finding(report, "broker")["says"] == "reachable, connection accepted as store"


def test_unreachable_broker_and_text_output(tmp_path: Path) -> None:
    config = tmp_path / "posedge.toml"
    config.write_text(f'scanners = []\nprinters = []\n[storage]\npath = "{tmp_path / "db.sqlite"}"\n'
                      f'[mqtt]\nurl = "mqtt://127.0.0.1:{free_port()}"\n', encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "posedge", "doctor", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "PROBLEM broker" in done.stdout and "cannot reach" in done.stdout and "fix: is the broker up" in done.stdout
    assert done.stdout.rstrip().endswith("1 problem(s)")


def test_invalid_config_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "posedge.toml"
    config.write_text("[storage]\npaht = 'x'\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "posedge", "doctor", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "storage.paht" in done.stderr
