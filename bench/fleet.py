"""A chain's fleet on one Mosquitto: a signed config push to every store, a reconnect storm, HQ's ingest.

Parts, all real and started here: a Mosquitto of the bench's own (temp dir, free port, `max_connections -1`,
no persistence), a PostgreSQL of its own (initdb/pg_ctl through `runuser -u postgres`, as the tests do,
tests/sync/conftest.py), a real `posedge-hq serve` on it, N simulated stores and a few real agents
(`posedge run` processes, each in a temp dir, with their own config key list and store id).

Simulated stores: protocol-level asyncio clients (aiomqtt over paho, the agent's MQTT library), all in one
asyncio loop of this process (the fd limit raised to the hard limit first). Each one does what the agent's
sync does on the wire (agent/hq_sync/, agent/reconfig/): on every connect it subscribes to its own `down/#`
and its tenant's `all/down/#`, then publishes `up/versions` (sync/down.py) with what it holds; a config
document is verified with sync/config_doc.py's `verify_document` (signature, kid, typ, tenant, scope), a
version not newer than the held one is `ignored` when it is the held token and `stale_version` otherwise,
and every outcome is a `down_ack` (sync/down.py) on its own `up/down_ack`; a records document is parsed by
sync/down.py's `parse_records` (a tenant document resent on the store's own topic taken as tenant scope),
ignored when not newer, and acknowledged with its counts. The simulated stores connect with clean sessions
(the broker keeps no queue for them), so after a drop only HQ's resend can bring what they missed: the
stricter case of docs/protocol.md 8.3.

Figures:
(a) push: signed by `posedge-hq push config`'s own function (hq/push.py `signed_config`), published once,
    QoS 1, retained on `posedge/v1/{tenant}/all/down/config` as its `publish_retained` does (from the
    bench's asyncio loop, see `SimFleet.publish`); the clock runs from just before signing to the moment the bench
    sees, polling HQ's PostgreSQL every 50 ms, an `applied` down_ack of that version from every store in
    `down_acks`. Baseline, same run, same clients: the same JWS published once (QoS 1) on a topic every
    simulated store subscribes to, with no HQ and no ack, the clock stopping when the last store received it
    (raw mosquitto fan-out).
(b) storm: every store's link is cut at once (a simulated store's socket is shut under its client: no
    DISCONNECT, the broker sees a dead link and drops its clean session; a real agent is SIGKILLed and
    started again, a store PC's power cut), HQ writes the next `members` document (tenant-wide) to its down log,
    which `posedge-hq serve` publishes at once (to nobody: every store is away), and a new config version is
    pushed retained; each simulated store returns after a random delay of up to `--storm-spread-s` (its
    backoff's jitter) and says its versions, and HQ resends the members document to its own topic. Lost: a store
    (simulated or real) that does not hold the latest members and config versions 60 s after the drop; the
    bench also waits for HQ to have recorded every store's applied ack of both.
(c) ingest: sale batches (100 sales each, zlib as the agent sends them) from `--ingest-stores` stores, each
    with one batch in flight until HQ's ack (a drainer's window of 1, so no gaps), into a fresh PostgreSQL
    database through 1, then 3 `posedge-hq serve --shared` workers; the clock stops at the last ack (an ack is
    published after COMMIT). Rate = events / s; target: 3 workers at least 1.5x one.

    .venv/bin/python bench/fleet.py [--stores 1000 10000] [--agents 3] [--ingest-stores 40 --ingest-batches 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import resource
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import aiomqtt
import paho.mqtt.client as mqtt
import psycopg

from posedge.hq import db as hq_db, down as hq_down, keys as hq_keys, push as hq_push
from posedge.sync.codes import Keyring
from posedge.sync.config_doc import DocumentRefused, SignedDocument, peek_version, verify_document
from posedge.sync.down import (
    DownAck,
    Records,
    Versions,
    build_down_ack,
    build_versions,
    parse_down_topic,
    parse_records,
    store_down_subscriptions,
    up_topic,
)
from posedge.sync.ids import uuid7
from posedge.sync.protocol import Batch, ProtocolError, Topics, WireEvent, build_batch, parse_ack

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest's AgentProcess
sys.path.insert(0, str(ROOT))
from conftest import AgentProcess  # noqa: E402  (the tests' own parts: one implementation)
from tests.sync.conftest import (  # noqa: E402
    Broker,
    HqProcess,
    PostgresCluster,
    postgres_binaries,
    sync_config,
    wait_for,
)

TENANT = "bench"
KID = "cfg-bench"
RAW_TOPIC = "bench/raw"  # the baseline's topic: every simulated store subscribes to it, nothing else uses it
PUSH_TARGET_S = {1000: 5.0, 10000: 30.0}
STORM_DEADLINE_S = 60.0
CONNECT_CONCURRENCY = 200  # connects in flight at once while the fleet comes up
MISC_INTERVAL_S = 10.0
POLL_S = 0.05  # how often the bench looks at HQ's database and at the stores


def raise_fd_limit() -> int:
    """The soft fd limit up to the hard one (children, mosquitto included, inherit it); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class FleetBroker(Broker):
    """The tests' Mosquitto with a fleet's settings: no connection limit, no persistence (a restart loses every
    session, queue and retained message: what the storm wants), a queue cap as a store broker would have."""

    def _configure(self, persistence: bool) -> list[str]:
        conf = self.home / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nmax_connections -1\n"
            f"persistence {'true' if persistence else 'false'}\npersistence_location {self.home}/\n"
            "max_queued_messages 100000\nset_tcp_nodelay true\nlog_dest stderr\nlog_type error\nlog_type warning\n",
            encoding="utf-8")
        return ["mosquitto", "-c", str(conf)]


# -- a simulated store: the agent's down-path protocol, no business ---------------------------------------


class StoreClient(aiomqtt.Client):
    """aiomqtt's client with paho's housekeeping (keepalive pings, retries) every MISC_INTERVAL_S instead of every
    second: 10,000 clients would otherwise wake the loop 10,000 times a second to do nothing (keepalive is 60 s)."""

    async def _misc_loop(self) -> None:
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:
            await asyncio.sleep(MISC_INTERVAL_S)



@dataclass
class Sim:
    """One simulated store's protocol state. `handle` is the agent's answer to a down message."""

    store: str
    keyring: Keyring
    config: dict[str, SignedDocument] = field(default_factory=dict)  # scope -> held document
    records: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, scope) -> held version
    connects: int = 0
    connected: bool = False
    raw_at: float | None = None
    resent: int = 0  # records documents that came as HQ's resend (tenant scope on the store's own topic)
    rejected: int = 0

    @property
    def topics(self) -> Topics:
        return Topics(TENANT, self.store)

    def versions(self) -> bytes:
        held: dict[str, dict[str, int]] = {"store": {}, "tenant": {}}
        for (kind, scope), version in self.records.items():
            held[scope][kind] = version
        for scope in ("store", "tenant"):
            held[scope]["config"] = self.config[scope].ver if scope in self.config else 0
        return build_versions(Versions(str(uuid7()), TENANT, self.store, held))

    def handle(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """What the store publishes in answer: [(topic, payload)]."""
        if topic == RAW_TOPIC:
            self.raw_at = time.monotonic()
            return []
        try:
            tenant, store, name = parse_down_topic(topic)
            if tenant != TENANT or store not in (None, self.store):
                raise ProtocolError("wrong_store", topic)
        except ProtocolError:
            self.rejected += 1
            return []
        if name == "config":
            return [self._ack(self._config(store, payload))]
        if name in ("ack", "confirm", "command"):
            return []
        return [self._ack(self._records(store, name, payload))]

    def _config(self, store: str | None, payload: bytes) -> DownAck:
        """As agent/reconfig/feature.py's on_down (its schema checks are the agent's: a simulated store has none)."""
        scope = "tenant" if store is None else "store"
        token = payload.decode("ascii", "replace").strip()
        try:
            doc = verify_document(token, self.keyring, TENANT, self.store if scope == "store" else None)
            held = self.config.get(scope)
            if held is not None and doc.ver <= held.ver:
                if doc.ver == held.ver and doc.token == held.token:
                    return self._down_ack("config", scope, doc.ver, "ignored")
                raise DocumentRefused("stale_version", f"version {doc.ver} is not newer than {held.ver}")
        except DocumentRefused as exc:
            self.rejected += 1
            return self._down_ack("config", scope, peek_version(token), "rejected", exc.reason)
        self.config[scope] = doc
        return self._down_ack("config", scope, doc.ver, "applied")

    def _records(self, store: str | None, kind: str, payload: bytes) -> DownAck:
        """As agent/hq_sync/inbox.py: parse, tenant resend on the own topic, version check, ack with counts."""
        try:
            try:
                doc = parse_records(payload, TENANT, store, kind)
            except ProtocolError as exc:
                if store is None or exc.reason != "wrong_store" or b'"store"' in payload:
                    raise
                doc = parse_records(payload, TENANT, None, kind)
                self.resent += 1
        except ProtocolError as exc:
            self.rejected += 1
            return self._down_ack(kind, "tenant" if store is None else "store", None, "rejected", exc.reason)
        return self._apply(doc)

    def _apply(self, doc: Records) -> DownAck:
        held = self.records.get((doc.kind, doc.scope), 0)
        if doc.version <= held:
            return self._down_ack(doc.kind, doc.scope, doc.version, "ignored", reply_to=doc.msg_id)
        self.records[(doc.kind, doc.scope)] = doc.version
        return self._down_ack(doc.kind, doc.scope, doc.version, "applied", reply_to=doc.msg_id,
                              counts={"applied": len(doc.records), "ignored": 0, "invalid": 0})

    def _down_ack(self, kind: str, scope: Any, version: int | None, result: Any, reason: str | None = None,
                  reply_to: str | None = None, counts: dict[str, int] | None = None) -> DownAck:
        return DownAck(str(uuid7()), TENANT, self.store, kind, scope, version, result, reason, reply_to, counts)

    def _ack(self, ack: DownAck) -> tuple[str, bytes]:
        return up_topic(self.topics, "down_ack"), build_down_ack(ack)


class SimFleet:
    """N simulated stores in one asyncio loop on a thread of this process; each reconnects on its own."""

    def __init__(self, port: int, count: int, keyring: Keyring, prefix: str = "s") -> None:
        self.port = port
        self.sims = [Sim(f"{prefix}{i:05d}", keyring) for i in range(count)]
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="sim-fleet", daemon=True)
        self.spread_s = 0.0  # the next reconnect's jitter, as a store's backoff would spread it
        self.returning = threading.Event()  # cleared: the stores stay away (the storm holds them off)
        self.returning.set()
        self.errors: list[str] = []
        self._stopping: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.clients: dict[str, aiomqtt.Client] = {}

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.set_exception_handler(self._loop_error)
        self.loop.set_default_executor(ThreadPoolExecutor(64, thread_name_prefix="sim-connect"))
        self.loop.run_forever()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """aiomqtt registers a writer for a socket paho already closed when a link dies mid-publish (EBADF): the
        link is gone and the store reconnects; anything else is reported."""
        if isinstance(context.get("exception"), OSError):
            return
        loop.default_exception_handler(context)

    def start(self, deadline_s: float) -> float:
        """Connect every store (at most CONNECT_CONCURRENCY at once); returns how long it took."""
        self.thread.start()
        began = time.monotonic()
        asyncio.run_coroutine_threadsafe(self._start_all(), self.loop).result(30)
        wait_for(lambda: self.connected() == len(self.sims), deadline_s,
                 f"{len(self.sims)} simulated stores connected (have {self.connected()}; errors {self.errors[:3]})",
                 interval=0.1)
        return time.monotonic() - began

    async def _start_all(self) -> None:
        self._stopping = asyncio.Event()
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self._tasks = [asyncio.create_task(self._store(sim, gate)) for sim in self.sims]

    async def _store(self, sim: Sim, gate: asyncio.Semaphore) -> None:
        assert self._stopping is not None
        first = True
        while not self._stopping.is_set():
            while not self.returning.is_set():
                await asyncio.sleep(0.05)
            if not first and self.spread_s:
                await asyncio.sleep(random.uniform(0.2, self.spread_s))
            first = False
            try:
                async with gate:
                    client = StoreClient("127.0.0.1", self.port, identifier=f"posedge-{TENANT}-{sim.store}",
                                            protocol=aiomqtt.ProtocolVersion.V5, keepalive=60, timeout=30)
                    await client.__aenter__()
                try:
                    await self._session(client, sim)
                finally:
                    sim.connected = False
                    try:
                        await client.__aexit__(None, None, None)
                    except aiomqtt.MqttError:
                        pass
            except aiomqtt.MqttError as exc:
                if len(self.errors) < 100:
                    self.errors.append(f"{sim.store}: {exc}")
                await asyncio.sleep(random.uniform(0.2, 1.0))
            except asyncio.CancelledError:
                return

    async def _session(self, client: aiomqtt.Client, sim: Sim) -> None:
        self.clients[sim.store] = client
        await client.subscribe([(topic, 1) for topic in (*store_down_subscriptions(sim.topics), RAW_TOPIC)])
        await client.publish(up_topic(sim.topics, "versions"), sim.versions(), qos=1)
        sim.connects += 1
        sim.connected = True
        async for message in client.messages:
            for topic, payload in sim.handle(str(message.topic), bytes(message.payload)):  # type: ignore[arg-type]
                await client.publish(topic, payload, qos=1)

    def drop_all(self) -> None:
        """Every store's link dies at once (its socket shut under the client, as a network cut would)."""
        def drop() -> None:
            for client in self.clients.values():
                sock = client._client.socket()  # aiomqtt keeps its paho client private; a cut needs the socket
                if sock is not None:
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
        self.loop.call_soon_threadsafe(drop)

    def publish(self, topic: str, payload: bytes, timeout_s: float = 120.0) -> None:
        """One QoS 1 retained publish from a new client, as hq/push.py's publish_retained makes it, returning at the
        broker's PUBACK (sent once it queued the message to every subscriber). From this loop, not a paho thread:
        paho's own loop uses select(), which takes no fd past 1,024, and this process holds one per store."""
        async def once() -> None:
            async with aiomqtt.Client("127.0.0.1", self.port, identifier=f"bench-push-{uuid.uuid4().hex[:12]}",
                                      protocol=aiomqtt.ProtocolVersion.V5, timeout=timeout_s) as client:
                await client.publish(topic, payload, qos=1, retain=True, timeout=timeout_s)
        asyncio.run_coroutine_threadsafe(once(), self.loop).result(timeout_s + 10)

    def connected(self) -> int:
        return sum(sim.connected for sim in self.sims)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return

        async def cancel() -> None:
            assert self._stopping is not None
            self._stopping.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(cancel(), self.loop).result(120)
        except TimeoutError:  # a starved loop: its sockets close with the process
            print("  simulated stores: not all stopped within 120 s", file=sys.stderr)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


# -- the fleet: broker, PostgreSQL, HQ, simulated stores, real agents --------------------------------------


def agent_for(home: Path, broker: Broker, store: str, key_line: str) -> AgentProcess:
    """A real `posedge run` of store `store` in tenant TENANT that takes config signed by the bench's key."""
    home.mkdir(parents=True, exist_ok=True)
    agent = AgentProcess(home, extra_config=f"[hq.config_keys]\n{key_line}\n",
                         mqtt_keys=sync_config(broker, extra="status_min_interval_s = 1.0"))
    text = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(text.replace('tenant = "test"', f'tenant = "{TENANT}"', 1)
                            .replace('id = "store-1"', f'id = "{store}"', 1), encoding="utf-8")
    return agent


def agent_holds(agent: AgentProcess) -> tuple[int, int]:
    """(tenant config version, tenant members version) a real agent holds (its status, its database)."""
    with agent.client() as client:
        scopes = client.get("/v1/status").json()["config"]["scopes"]
    config = (scopes.get("tenant") or {}).get("ver", 0)
    conn = sqlite3.connect(f"file:{agent.home / 'var' / 'posedge.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT version FROM down_versions WHERE kind = 'members' AND scope = 'tenant'").fetchone()
    finally:
        conn.close()
    return int(config), int(row[0]) if row else 0


class Fleet:
    """Everything of one run at N stores; `close()` stops it all (each process by its own handle)."""

    def __init__(self, home: Path, postgres: PostgresCluster, stores: int, agents: int) -> None:
        self.home = home
        (home / "broker").mkdir(parents=True)
        self.broker = FleetBroker(home / "broker", persistence=False)
        self.db_url = postgres.new_database()
        (home / "hq").mkdir()
        self.hq = HqProcess(home / "hq", self.broker.url, "5", self.db_url)
        self.key_path, minter = hq_keys.write_key(home / "keys", KID)
        self.key_line = hq_keys.public_key_line(minter)
        self.keyring = Keyring({minter.kid: minter.public_key_b64})
        self.sims = SimFleet(self.broker.port, stores, self.keyring)
        self.agents = [agent_for(home / f"agent{i}", self.broker, f"real-{i}", self.key_line) for i in range(agents)]
        self.config_ver = 0
        self.members_ver = 0
        self._conn: psycopg.Connection[Any] | None = None
        self.hq_db: hq_db.Database | None = None

    @property
    def stores(self) -> int:
        return len(self.sims.sims) + len(self.agents)

    def start(self) -> float:
        """Broker, HQ, real agents, then the simulated stores; returns how long the simulated ones took to connect."""
        self.broker.start()
        self.hq.start()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(AgentProcess.start, self.agents))
        self._conn = psycopg.connect(self.db_url, autocommit=True)
        self.hq_db = hq_db.open_database(self.db_url)
        took = self.sims.start(deadline_s=120 + len(self.sims.sims) / 50)
        wait_for(lambda: self._agents_connected(), 60, "the real agents connected")
        return took

    def _agents_connected(self) -> bool:
        for agent in self.agents:
            with agent.client() as client:
                if client.get("/v1/status").json()["sync"].get("state") != "connected":
                    return False
        return True

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        return list(self._conn.execute(sql.replace("?", "%s"), params).fetchall())

    def acked(self, kind: str, version: int) -> int:
        """Stores whose `applied` down_ack of this tenant-wide version HQ has recorded."""
        rows = self.query("SELECT count(*) FROM down_acks WHERE kind = ? AND scope = 'tenant'"
                          " AND version = ? AND result = 'applied'", kind, version)  # a store applies a version once
        return int(rows[0][0])

    def wait_acked(self, kind: str, version: int, deadline_s: float, began: float) -> float:
        """Seconds from `began` until every store's applied ack of (kind, version) is in HQ's database."""
        end = time.monotonic() + deadline_s
        while True:
            if self.acked(kind, version) >= self.stores:
                return time.monotonic() - began
            if time.monotonic() > end:
                raise AssertionError(f"{kind} v{version}: {self.acked(kind, version)} of {self.stores} stores acked"
                                     f" within {deadline_s} s")
            time.sleep(POLL_S)

    # -- what is measured ---------------------------------------------------------------------------------
    def raw_fanout(self, payload: bytes, deadline_s: float = 60) -> float:
        """The baseline: one QoS 1 publish to every simulated store, no HQ, no ack; seconds to the last receipt."""
        for sim in self.sims.sims:
            sim.raw_at = None
        began = time.monotonic()
        self.sims.publish(RAW_TOPIC, payload)  # retained as the config is; the topic is ours
        wait_for(lambda: all(s.raw_at is not None for s in self.sims.sims), deadline_s, "raw fan-out received",
                 interval=POLL_S)
        return max(s.raw_at or 0.0 for s in self.sims.sims) - began

    def sign_config(self) -> bytes:
        self.config_ver += 1
        token = hq_push.signed_config(self.key_path, KID, TENANT, None, self.config_ver,
                                      {"coupons": {"max_per_sale": 1 + self.config_ver % 5}})
        return token.encode("ascii")

    def push_config(self, deadline_s: float) -> float:
        """(a): sign and publish the next tenant-wide config; seconds until HQ recorded every store's ack."""
        began = time.monotonic()
        token = self.sign_config()
        self.sims.publish(hq_push.config_topic(TENANT, None), token)
        return self.wait_acked("config", self.config_ver, deadline_s, began)

    def push_members(self, deadline_s: float | None = None) -> float | None:
        """The next tenant-wide members document into HQ's down log (`posedge-hq serve` publishes it)."""
        assert self.hq_db is not None
        began = time.monotonic()
        self.members_ver = hq_down.write_document(self.hq_db, TENANT, None, "members", [
            {"member_id": "M-FLEET", "version": self.members_ver + 1, "tier": "basic", "points": 100}])
        return None if deadline_s is None else self.wait_acked("members", self.members_ver, deadline_s, began)

    def storm(self, spread_s: float) -> dict[str, Any]:
        """(b): every store drops at once and comes back; HQ resends what is newer; who ends without the latest?"""
        dropped = time.monotonic()
        self.sims.spread_s = spread_s
        self.sims.returning.clear()  # until HQ has written what they will miss
        self.sims.drop_all()  # each socket shut under its client: no DISCONNECT, the broker sees a dead link
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(AgentProcess.kill, self.agents))  # the store PC's power cut
        wait_for(lambda: self.sims.connected() == 0, 30, "every simulated store saw the drop", interval=0.05)
        self.push_members()  # HQ publishes it at once: to nobody yet; the stores' versions bring it
        token = self.sign_config()  # retained: each store gets it when it subscribes again
        self.sims.publish(hq_push.config_topic(TENANT, None), token)
        self.sims.returning.set()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(AgentProcess.start, self.agents))
        deadline = dropped + STORM_DEADLINE_S
        returned: float | None = None
        while returned is None and time.monotonic() < deadline:
            returned = self._all_returned(dropped)
            time.sleep(0.1)
        while time.monotonic() < deadline and (self._lost(final=False) or not self._all_recorded()):
            time.sleep(0.2)
        synced = time.monotonic() - dropped
        lost = self._lost(final=True)
        return {"returned_s": returned, "back": self.sims.connected(), "synced_s": synced, "lost": len(lost),
                "lost_stores": lost[:10],
                "resent": sum(s.resent for s in self.sims.sims), "acked_config": self.acked("config", self.config_ver),
                "acked_members": self.acked("members", self.members_ver), "errors": self.sims.errors[:3]}

    def _all_recorded(self) -> bool:
        return min(self.acked("config", self.config_ver), self.acked("members", self.members_ver)) >= self.stores

    def _all_returned(self, dropped: float) -> float | None:
        if self.sims.connected() < len(self.sims.sims) or not self._agents_connected():
            return None
        return time.monotonic() - dropped

    def _lost(self, final: bool) -> list[str]:
        """Stores that do not hold the latest config and members versions (tenant-wide)."""
        lost = [s.store for s in self.sims.sims if (s.config["tenant"].ver if "tenant" in s.config else 0)
                != self.config_ver or s.records.get(("members", "tenant"), 0) != self.members_ver]
        if final or not lost:
            for i, agent in enumerate(self.agents):
                try:
                    held = agent_holds(agent)
                except Exception as exc:  # an agent that does not answer holds nothing we can count
                    held = (0, 0)
                    print(f"  real-{i}: status not readable: {exc}", file=sys.stderr)
                if held != (self.config_ver, self.members_ver):
                    lost.append(f"real-{i} {held}")
        return lost

    def close(self) -> None:
        try:
            self.sims.stop()
        except Exception as exc:  # the processes below must stop whatever happened to the loop
            print(f"  simulated stores did not stop cleanly: {exc!r}", file=sys.stderr)
        for agent in self.agents:
            try:
                agent.stop()
            except AssertionError as exc:
                print(f"  {exc}"[:300], file=sys.stderr)
        self.hq.stop()
        self.broker.stop()
        if self._conn is not None:
            self._conn.close()
        if self.hq_db is not None:
            self.hq_db.close()


# -- (c) ingest with 1 and 3 shared workers ---------------------------------------------------------------


def sale_event(store: str, seq: int) -> WireEvent:
    sale_id = str(uuid.uuid4())
    at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
    payload = {"sale_id": sale_id, "receipt_no": f"20261202-{seq:06d}", "gross_fen": 300, "discount_fen": 0,
               "total_fen": 300, "paid_fen": 300, "change_fen": 0, "tenant": TENANT, "store_id": store,
               "business_day": "20261202", "till": "T1", "cashier": "c1", "member_id": None,
               "lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "unit": "pcs",
                          "unit_price_fen": 300, "discount_fen": 0, "amount_fen": 300}],
               "payments": [{"method": "cash", "amount_fen": 300, "reference": None}],
               "stock_movements": [{"sku": "6901234567892", "delta": -1}]}
    return WireEvent(seq, str(uuid7()), "sale", sale_id, at, payload)


def ingest_batches(stores: int, batches: int, per_batch: int) -> dict[str, list[tuple[int, bytes]]]:
    """store -> [(last seq, batch payload)], built before the clock starts."""
    made: dict[str, list[tuple[int, bytes]]] = {}
    for i in range(stores):
        store, stream = f"u{i:04d}", str(uuid7())
        made[store] = []
        for b in range(batches):
            events = tuple(sale_event(store, b * per_batch + k + 1) for k in range(per_batch))
            batch = Batch(str(uuid7()), TENANT, store, stream, 1, events[0].created_at, events)
            made[store].append((events[-1].seq, build_batch(batch)))
    return made


async def _drive_ingest(port: int, made: dict[str, list[tuple[int, bytes]]], deadline_s: float) -> float:
    """Send each store's batches one at a time (the next after HQ's ack of the one before); seconds to the last."""
    position = {store: 0 for store in made}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-ingest-{uuid.uuid4().hex[:8]}",
                              protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=1000) as client:
        await client.subscribe(f"posedge/v1/{TENANT}/+/down/ack", qos=1)
        began = time.monotonic()
        for store, batches in made.items():
            await client.publish(up_topic(Topics(TENANT, store), "batch"), batches[0][1], qos=1)
        left = len(made)
        async with asyncio.timeout(deadline_s):
            async for message in client.messages:
                store = str(message.topic).split("/")[3]
                ack = parse_ack(bytes(message.payload), TENANT, store)  # type: ignore[arg-type]
                batches = position.get(store)
                if batches is None or ack.error is not None:
                    raise AssertionError(f"unexpected ack for {store}: {ack}")
                done = position[store]
                if done < len(made[store]) and ack.acked_seq >= made[store][done][0]:
                    position[store] = done = done + 1
                    if done == len(made[store]):
                        left -= 1
                        if left == 0:
                            return time.monotonic() - began
                    else:
                        await client.publish(up_topic(Topics(TENANT, store), "batch"), made[store][done][1], qos=1)
    raise AssertionError("the ingest did not finish")


def ingest(home: Path, postgres: PostgresCluster, workers: int, made: dict[str, list[tuple[int, bytes]]],
           deadline_s: float = 600) -> tuple[float, int]:
    """(c) one run: a broker, `workers` shared HQ workers on a fresh database; returns (seconds, events)."""
    (home / "broker").mkdir(parents=True)
    broker = FleetBroker(home / "broker", persistence=False).start()
    db_url = postgres.new_database()
    hqs = []
    for i in range(workers):
        (home / f"hq{i}").mkdir()
        hq = HqProcess(home / f"hq{i}", broker.url, "5", db_url)
        hq.args += ["--shared", "posedge-hq"]
        hqs.append(hq)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(HqProcess.start, hqs))
        time.sleep(1.0)  # every worker subscribed (HQ subscribes on CONNACK, after its schema)
        took = asyncio.run(_drive_ingest(broker.port, made, deadline_s))
        events = int(hqs[0].query("SELECT count(*) FROM sales")[0][0])
        return took, events
    finally:
        for hq in hqs:
            hq.stop()
        broker.stop()


# -- the bench --------------------------------------------------------------------------------------------


def verdict(met: bool) -> str:
    return "met" if met else "NOT MET"


def run_fleet(home: Path, postgres: PostgresCluster, stores: int, agents: int, storm_spread_s: float,
              report: Callable[[str], None]) -> dict[str, Any]:
    fleet = Fleet(home, postgres, stores, agents)
    try:
        took = fleet.start()
        total = fleet.stores
        report(f"N={stores} simulated + {agents} real agents: connected in {took:.1f} s")
        members = fleet.push_members(deadline_s=120)
        report(f"  members v1 (down log -> serve's publisher) acked by all {total}: {members:.2f} s")
        token = fleet.sign_config()
        fleet.config_ver -= 1  # the baseline's payload: the same JWS, never a version of its own
        raw = fleet.raw_fanout(token)
        push = fleet.push_config(deadline_s=600)
        target = PUSH_TARGET_S.get(stores)
        verdict_text = f"target < {target:g} s: {verdict(push < target)}" if target else "no target at this N"
        report(f"  (a) config push to all {total} stores, time to the last ack in HQ's PostgreSQL: {push:.2f} s"
               f" ({verdict_text}); raw mosquitto fan-out of the same JWS to the {stores} simulated stores, no HQ,"
               f" no ack: {raw:.2f} s; ratio {push / raw:.1f}x")
        storm = fleet.storm(storm_spread_s)
        report(f"  (b) storm: every store's link cut at once (simulated: socket shut; real agents: SIGKILL and"
               f" restart), each back after up to {storm_spread_s:g} s of jitter: all {total} back after"
               f" {_seconds(storm['returned_s'])} (target < 60 s: {verdict(storm['returned_s'] is not None)};"
               f" {storm['back']} simulated stores connected at the end), resynced after {storm['synced_s']:.1f} s;"
               f" lost {storm['lost']} (target 0: {verdict(storm['lost'] == 0)}) {storm['lost_stores'] or ''};"
               f" members v{fleet.members_ver} resent by HQ to {storm['resent']} simulated stores;"
               f" HQ recorded applied acks: config v{fleet.config_ver} {storm['acked_config']}/{total},"
               f" members v{fleet.members_ver} {storm['acked_members']}/{total}")
        return {"stores": stores, "push_s": push, "raw_s": raw, "target_s": target, **storm}
    finally:
        fleet.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", type=int, nargs="+", default=[1000, 10000], help="fleet sizes, in order (0: none)")
    parser.add_argument("--agents", type=int, default=3, help="real agents beside the simulated stores")
    parser.add_argument("--storm-spread-s", type=float, default=10.0, help="the stores' reconnect jitter")
    parser.add_argument("--ingest-stores", type=int, default=40)
    parser.add_argument("--ingest-batches", type=int, default=5, help="batches of 100 sales per store")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    limit = raise_fd_limit()
    binaries = postgres_binaries()
    if binaries is None:
        sys.exit("bench/fleet.py needs PostgreSQL's initdb/pg_ctl (tools/system-deps.sh test)")
    print(f"machine: {platform.node()} {os.cpu_count()} cores, {_mem_gib():.0f} GiB; fd limit {limit};"
          f" {platform.python_implementation()} {platform.python_version()}", flush=True)
    postgres = PostgresCluster(binaries).start()
    home = Path(tempfile.mkdtemp(prefix="posedge-fleet-"))
    try:
        for stores in args.stores:
            if stores <= 0:  # --stores 0: the ingest figures alone
                continue
            if stores + 2000 > limit:
                print(f"N={stores}: skipped, the fd limit is {limit} (each store is one socket here and one in"
                      " mosquitto)", flush=True)
                continue
            run_fleet(home / f"n{stores}", postgres, stores, args.agents, args.storm_spread_s,
                      lambda line: print(line, flush=True))
        if not args.skip_ingest:
            made = ingest_batches(args.ingest_stores, args.ingest_batches, 100)
            rates = {}
            for workers in (1, 3):
                took, events = ingest(home / f"ingest{workers}", postgres, workers, made)
                rates[workers] = events / took
                print(f"  (c) ingest, {workers} posedge-hq serve --shared worker(s) into PostgreSQL: {events} sale"
                      f" events in {took:.2f} s = {rates[workers]:,.0f} events/s", flush=True)
            ratio = rates[3] / rates[1]
            print(f"  (c) 3 workers / 1 worker: {ratio:.2f}x (target >= 1.5x: {verdict(ratio >= 1.5)})", flush=True)
    finally:
        postgres.stop()
        shutil.rmtree(home, ignore_errors=True)


def _seconds(value: float | None) -> str:
    return "more than 60 s" if value is None else f"{value:.1f} s"


def _mem_gib() -> float:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        return int(meminfo.readline().split()[1]) / 2**20


if __name__ == "__main__":
    main()
