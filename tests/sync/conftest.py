"""Real parts for the sync tests: a broker per test on free ports (mosquitto, or nats-server with its MQTT
listener), the real `posedge-hq serve` process, and for HQ on PostgreSQL the session's own PostgreSQL (initdb
in a temp dir, a free port), a database per test."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

from conftest import AgentProcess, free_port
from posedge.hq.keys import load_minter
from posedge.sync.codes import CodeMinter

NATS_SERVER = "/usr/sbin/nats-server"  # Debian package nats-server (tools/system-deps.sh test)


def wait_for(predicate: Callable[[], Any], deadline_s: float, what: str, interval: float = 0.05) -> Any:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {deadline_s} s")


class ChildProcess:
    """A process the test started and may stop (SIGTERM, then SIGKILL after 10 s) or kill."""

    proc: subprocess.Popen[bytes] | None = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class Broker(ChildProcess):
    """`mosquitto -c <conf>` in a temp dir, on a fixed free port, with stop / start / SIGKILL controls."""

    name = "mosquitto"

    def __init__(self, home: Path, persistence: bool = True) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"mqtt://127.0.0.1:{self.port}"
        self.log = home / f"{self.name}.log"
        self.argv = self._configure(persistence)
        self.proc: subprocess.Popen[bytes] | None = None

    def _configure(self, persistence: bool) -> list[str]:
        conf = self.home / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"persistence {'true' if persistence else 'false'}\npersistence_location {self.home}/\n"
            "autosave_interval 1\nmax_queued_messages 100000\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            encoding="utf-8")
        return ["mosquitto", "-c", str(conf)]

    def start(self, deadline_s: float = 10.0) -> "Broker":
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.home, stdin=subprocess.DEVNULL, stdout=handle,
                                     stderr=subprocess.STDOUT)
        handle.close()
        wait_for(self._ready, deadline_s, f"{self.name} on {self.port} ({self.log.read_text(errors='replace')})")
        return self

    def _ready(self) -> bool:
        return self._listening()

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited: {self.log.read_text(errors='replace')}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


class NatsBroker(Broker):
    """`nats-server -c <conf>`: its MQTT listener (3.1.1 only) on `port`, JetStream (which MQTT needs for
    sessions, QoS 1 and retained messages) storing in the temp dir, so it always persists; no auth."""

    name = "nats-server"

    def _configure(self, persistence: bool) -> list[str]:
        assert persistence, "nats-server's MQTT keeps its state in JetStream: there is no run without persistence"
        self.client_port, self.monitor_port = free_port(), free_port()
        conf = self.home / "nats.conf"
        conf.write_text(
            f'server_name: "posedge-test-{self.port}"\nlisten: "127.0.0.1:{self.client_port}"\n'
            f'http: "127.0.0.1:{self.monitor_port}"\n'
            f'jetstream {{ store_dir: "{self.home / "jetstream"}", max_mem: 64MB, max_file: 1GB }}\n'
            f'mqtt {{ listen: "127.0.0.1:{self.port}" }}\n',
            encoding="utf-8")
        return [NATS_SERVER, "-c", str(conf)]

    def _ready(self) -> bool:
        """The MQTT port takes connections before JetStream has recovered its streams; /healthz waits for it."""
        if not self._listening():
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=0.5) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False


class HqProcess(ChildProcess):
    """`posedge-hq serve` as a real process (python -m posedge.hq), its database (SQLite or PostgreSQL) read by
    the test."""

    def __init__(self, home: Path, broker_url: str, protocol: str = "5", db_url: str | None = None) -> None:
        self.home = home
        self.db = home / "hq.db"
        self.db_url = db_url or f"sqlite:///{self.db}"
        self.log = home / "hq.log"
        self.args = [sys.executable, "-m", "posedge.hq", "serve", "--mqtt", broker_url, "--db", self.db_url,
                     "--protocol", protocol]
        self.proc: subprocess.Popen[bytes] | None = None
        self._connects_before = 0

    def start(self) -> "HqProcess":
        self._connects_before = self._connects()
        handle = open(self.log, "ab")
        self.proc = subprocess.Popen(self.args, cwd=self.home, stdin=subprocess.DEVNULL, stdout=handle,
                                     stderr=subprocess.STDOUT)
        handle.close()
        wait_for(lambda: self._schema_made() or self._died(), 15, "HQ database created")
        return self

    def _connects(self) -> int:
        return self.log.read_text(errors="replace").count("event=hq_online") if self.log.exists() else 0

    def wait_connected(self, deadline_s: float = 15.0) -> "HqProcess":
        """Until HQ (since its last start) holds its up subscription (`event=hq_online` is logged after the
        SUBACK): `start` waits only for the schema, and HQ's session is clean, so what is published on the up
        topics before this is not for it."""
        wait_for(lambda: self._connects() > self._connects_before or self._died(), deadline_s,
                 f"HQ connected to the broker ({self.log.read_text(errors='replace')[-1500:]})")
        return self

    def _died(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"posedge-hq exited {self.proc.returncode}: {self.log.read_text(errors='replace')}")
        return False

    def _schema_made(self) -> bool:
        if self.db_url.startswith("sqlite:"):
            return self.db.exists()
        return self.query("SELECT to_regclass('sales') IS NOT NULL") == [(True,)]  # HQ makes its schema at once

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """`sql` with `?` placeholders, on SQLite or PostgreSQL; [] while the schema is not created yet."""
        if not self.db_url.startswith("sqlite:"):
            return postgres_query(self.db_url, sql, params)
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError:  # the schema is not created yet
            return []
        finally:
            conn.close()

    def sale_ids(self, tenant: str = "test", store: str = "store-1") -> list[str]:
        """HQ's sales of the store in seq order: streams in the order HQ first saw them, each by seq."""
        return [r[0] for r in self.query(
            "SELECT s.sale_id FROM sales s JOIN streams t ON t.tenant = s.tenant AND t.store_id = s.store_id "
            "AND t.stream = s.stream WHERE s.tenant = ? AND s.store_id = ? ORDER BY t.first_seen_at, s.seq",
            tenant, store)]


def postgres_query(url: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        try:
            cur = conn.execute(sql.replace("?", "%s"), params)
        except psycopg.errors.UndefinedTable:  # the schema is not created yet
            return []
        return list(cur.fetchall())


def postgres_binaries() -> Path | None:
    """The folder of Debian's initdb and pg_ctl (on PATH or the newest /usr/lib/postgresql/*/bin), or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class PostgresCluster:
    """A PostgreSQL of the test session's own: initdb in a temp dir under /tmp, started on a free port.

    PostgreSQL refuses to run as root: as root, the dir belongs to the `postgres` user and initdb and pg_ctl
    run through `runuser -u postgres`."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.home = Path(tempfile.mkdtemp(prefix="posedge-pg-", dir="/tmp"))
        self.data = self.home / "data"
        self.port = free_port()
        self.made = 0
        os.chmod(self.home, 0o755)
        self.as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.home, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self.as_owner, str(self.binaries / tool), *args], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed: {result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self) -> "PostgresCluster":
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.home / "postgres.log"), "-w", "-t", "60", "-o",
                  f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1", "start")
        return self

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.home, ignore_errors=True)

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def new_database(self) -> str:
        """A fresh, empty database: each test's HQ starts with no schema, as a new deployment does."""
        import psycopg

        self.made += 1
        name = f"hq_{self.made}"
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (Debian package postgresql; "
                    "tools/system-deps.sh test installs it)")
    cluster = PostgresCluster(binaries).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def hq_db(request: pytest.FixtureRequest) -> str | None:
    """HQ's --db for a test parametrized with indirect `hq_db`: "sqlite" (HQ's own file) or "postgresql"."""
    if request.param == "sqlite":
        return None
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.new_database()


def sync_config(broker: Broker, protocol: str = "5", extra: str = "") -> str:
    """The [mqtt] keys of a test agent that syncs (tests/conftest.py writes `enabled = false` first)."""
    return (f'url = "{broker.url}"\nenabled = true\nprotocol = "{protocol}"\nack_timeout_s = 2.0\n'
            f"reconnect_max_s = 2.0\nbatch_max_events = 50\n{extra}")


@pytest.fixture
def broker_factory(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    made: list[Broker] = []

    def make(persistence: bool = True, kind: str = "mosquitto") -> Broker:
        home = tmp_path / f"broker{len(made)}"
        home.mkdir()
        broker = {"mosquitto": Broker, "nats": NatsBroker}[kind](home, persistence)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.kill()


@pytest.fixture
def hq_factory(tmp_path: Path) -> Iterator[Callable[..., HqProcess]]:
    made: list[HqProcess] = []

    def make(broker: Broker, protocol: str = "5", db_url: str | None = None) -> HqProcess:
        home = tmp_path / f"hq{len(made)}"
        home.mkdir(exist_ok=True)
        hq = HqProcess(home, broker.url, protocol, db_url)
        made.append(hq)
        return hq

    yield make
    for hq in made:
        hq.stop()


def syncing_agent(agent_factory: Callable[..., AgentProcess], broker: Broker, protocol: str = "5",
                  **kwargs: Any) -> AgentProcess:
    return agent_factory(mqtt_keys=sync_config(broker, protocol), **kwargs)


def hq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge.hq", *args], capture_output=True, text=True, timeout=60)


class HqWithApi:
    """A broker and `posedge-hq serve --mqtt --db --http` as processes, for the mini-program API's tests: a signing
    key (kid hq-k1, its public line for the agents' `[hq.public_keys]`), hq.toml with two tiers, the stores
    registered with their locations, a bearer-token client on the API and a minter of HQ's codes."""

    def __init__(self, home: Path, token: str, stores: dict[str, tuple[float, float]]) -> None:
        (home / "broker").mkdir()
        self.broker = Broker(home / "broker").start()
        keys = home / "keys"
        made = hq_cli("keygen", "--out", str(keys), "--kid", "hq-k1")
        assert made.returncode == 0, made.stderr
        self.public_line = made.stdout.strip()
        (home / "hq.toml").write_text(
            f'tenant = "test"\n[signing]\nkey_file = "{keys / "hq-k1.pem"}"\nkid = "hq-k1"\n'
            '[tiers]\nwindow_days = 30\nlevels = [{name = "basic", min_spend_fen = 0},'
            ' {name = "silver", min_spend_fen = 10000}]\n', encoding="utf-8")
        (home / "token").write_text(token + "\n", encoding="utf-8")
        (home / "hq").mkdir()
        self.hq = HqProcess(home / "hq", self.broker.url)
        for store, (lat, lng) in stores.items():
            added = hq_cli("store", "add", "test", store, "--lat", str(lat), "--lng", str(lng), "--name", store,
                           "--db", self.hq.db_url)
            assert added.returncode == 0, added.stderr
        self.port = free_port()
        self.hq.args += ["--http", f"127.0.0.1:{self.port}", "--http-token-file", str(home / "token"),
                         "--config", str(home / "hq.toml")]
        self.hq.start()
        self.api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                headers={"Authorization": f"Bearer {token}"})
        wait_for(self._answers, 20, f"the HQ API ({self.hq.log.read_text(errors='replace')[-2000:]})")
        self.minter = CodeMinter.from_seed("hq-k1", load_minter(keys / "hq-k1.pem", "hq-k1").seed_b64)

    def _answers(self) -> bool:
        try:
            return self.api.get("/v1/openapi.json").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self) -> None:
        self.api.close()
        self.hq.stop()
        self.broker.stop()
