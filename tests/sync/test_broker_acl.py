"""Per-store broker credentials and ACL (`posedge-hq store add`, `posedge-hq broker-config`) on a real mosquitto
started with exactly the files broker-config wrote.

"Not delivered" is proven without waiting: after the refused publish the same client publishes a marker
on a topic it may use, and an observer subscribed to `#` (a user the test adds; not part of what
broker-config writes) receives the marker. A broker delivers one client's messages to one subscriber in
order, so had the refused one gone through, it would have come first.
"""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from conftest import sale_body
from posedge.hq.registry import mosquitto_hash
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for

ROOT = "posedge/v1/test"


def hq_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge.hq", *args], capture_output=True, text=True, timeout=60)


class AuthBroker(Broker):
    """mosquitto with no anonymous access, broker-config's password file and ACL, plus the test's observer."""

    def __init__(self, home: Path, files: Path) -> None:
        self.files = files
        super().__init__(home)

    def _configure(self, persistence: bool) -> list[str]:
        conf = self.home / "mosquitto.conf"
        # user root: as root, mosquitto would drop to its own user, who cannot read the test's 0600 files.
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous false\npersistence false\nuser root\n"
                        f"password_file {self.files / 'passwords'}\nacl_file {self.files / 'acl'}\n"
                        "log_dest stderr\nlog_type error\nlog_type warning\n", encoding="utf-8")
        return ["mosquitto", "-c", str(conf)]


class Peer:
    """A paho client (MQTT 5, for reason codes) whose messages, SUBACK and PUBACK codes land in queues."""

    def __init__(self, broker: Broker, username: str | None, password: str | None) -> None:
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, f"peer-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        if username is not None:
            self.client.username_pw_set(username, password)
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.pubacks: queue.Queue[int] = queue.Queue()
        self.connacks: queue.Queue[int] = queue.Queue()
        self.client.on_connect = lambda c, u, f, rc, p: self.connacks.put(rc.value)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda c, u, mid, codes, p: self.subacks.put([code.value for code in codes])
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.put(rc.value)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def connected(self) -> int:
        return self.connacks.get(timeout=10)

    def subscribe(self, topic: str) -> int:
        self.client.subscribe(topic, qos=1)
        return self.subacks.get(timeout=10)[0]

    def publish(self, topic: str, payload: bytes = b"{}") -> int:
        self.client.publish(topic, payload, qos=1)
        return self.pubacks.get(timeout=10)

    def next_message(self) -> tuple[str, bytes]:
        return self.messages.get(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def credentials(stdout: str) -> tuple[str, str]:
    found = dict(re.findall(r'^(username|password) = "([^"]+)"$', stdout, re.M))
    return found["username"], found["password"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("acl")
    db_url = f"sqlite:///{home / 'hq.db'}"
    users = {}
    for store in ("store-1", "store-2"):
        added = hq_cli("store", "add", "test", store, "--db", db_url)
        assert added.returncode == 0, added.stderr
        users[store] = credentials(added.stdout)
    again = hq_cli("store", "add", "test", "store-1", "--db", db_url)
    assert again.returncode == 2 and "registered already" in again.stderr
    files = home / "broker-files"
    written = hq_cli("broker-config", "--out", str(files), "--db", db_url, "--hq-password-file",
                     str(home / "hq-password"))
    assert written.returncode == 0, written.stderr
    hq_password = (home / "hq-password").read_text().strip()
    # The test's observer reads everything (appended: it is not what broker-config makes).
    with open(files / "passwords", "a", encoding="utf-8") as out:
        out.write(f"observer:{mosquitto_hash('observer-pw')}\n")
    with open(files / "acl", "a", encoding="utf-8") as out:
        out.write("\nuser observer\ntopic read #\n")
    (home / "broker").mkdir()
    broker = AuthBroker(home / "broker", files).start()
    yield {"home": home, "db_url": db_url, "users": users, "hq_password": hq_password, "broker": broker,
           "files": files}
    broker.stop()


@pytest.fixture
def peers(fleet: dict[str, Any]) -> Iterator[dict[str, Peer]]:
    made = {name: Peer(fleet["broker"], *creds) for name, creds in [
        ("a", fleet["users"]["store-1"]), ("b", fleet["users"]["store-2"]),
        ("hq", ("posedge-hq", fleet["hq_password"])), ("observer", ("observer", "observer-pw"))]}
    for peer in made.values():
        assert peer.connected() == 0
    assert made["observer"].subscribe("#") == 1
    yield made
    for peer in made.values():
        peer.close()


def refused_then_marker(sender: Peer, observer: Peer, refused_topic: str, marker_topic: str) -> None:
    refused, marker = f"refused-{uuid.uuid4()}".encode(), f"marker-{uuid.uuid4()}".encode()
    sender.publish(refused_topic, refused)
    assert sender.publish(marker_topic, marker) == 0
    seen = []
    while (message := observer.next_message()) != (marker_topic, marker):
        seen.append(message[1])
    assert refused not in seen, f"a publish on {refused_topic} reached a subscriber"


def test_the_registry_keeps_only_a_mosquitto_hash_and_the_files_are_private(fleet: dict[str, Any]) -> None:
    import sqlite3
    rows = sqlite3.connect(Path(fleet["db_url"].removeprefix("sqlite:///"))).execute(
        "SELECT username, password_hash FROM stores").fetchall()
    assert {u for u, _ in rows} == {"test.store-1", "test.store-2"}
    for username, stored in rows:
        assert stored.startswith("$7$101$") and fleet["users"][username.split(".")[1]][1] not in stored
    assert all((fleet["files"] / name).stat().st_mode & 0o077 == 0 for name in ("passwords", "acl"))


def test_anonymous_and_wrong_passwords_are_refused(fleet: dict[str, Any]) -> None:
    nobody = Peer(fleet["broker"], None, None)
    wrong = Peer(fleet["broker"], "test.store-1", "not-the-password")
    try:
        assert nobody.connected() != 0 and wrong.connected() != 0
    finally:
        nobody.close()
        wrong.close()


def test_a_store_cannot_read_another_stores_topics_nor_everything_through_hash(peers: dict[str, Peer]) -> None:
    """mosquitto's acl_file grants the SUBACK and checks `read` on every delivery (the dynamic-security plugin
    refuses the SUBACK itself): what counts is that nothing of store-2 reaches store-1."""
    a, b, hq, observer = peers["a"], peers["b"], peers["hq"], peers["observer"]
    for greedy in ("#", f"{ROOT}/store-2/down/#", f"{ROOT}/store-2/up/#", f"{ROOT}/+/down/#", f"{ROOT}/+/status"):
        a.subscribe(greedy)
    for topic in (f"{ROOT}/store-2/up/hello", f"{ROOT}/store-2/status"):
        assert b.publish(topic, b"of-b") == 0
        assert observer.next_message() == (topic, b"of-b")  # routed (to every subscriber) by now
    hq.publish(f"{ROOT}/store-2/down/ack", b"for-b")
    hq.publish(f"{ROOT}/store-1/down/ack", b"for-a")
    assert a.next_message() == (f"{ROOT}/store-1/down/ack", b"for-a"), "store-1 received store-2's messages"


def test_a_store_cannot_write_another_stores_topics_nor_any_down_topic(peers: dict[str, Peer]) -> None:
    a, observer = peers["a"], peers["observer"]
    mine = f"{ROOT}/store-1/up/batch"
    for refused in (f"{ROOT}/store-2/up/batch", f"{ROOT}/store-2/status", f"{ROOT}/store-1/down/ack",
                    f"{ROOT}/store-1/down/config", f"{ROOT}/all/down/config", f"{ROOT}/store-2/down/ack"):
        refused_then_marker(a, observer, refused, mine)
    assert a.publish(f"{ROOT}/store-2/down/ack") == 0x87  # MQTT 5 says why in the PUBACK


def test_hq_reads_every_stores_up_and_status_and_writes_down_but_not_up(peers: dict[str, Peer]) -> None:
    hq, a, b, observer = peers["hq"], peers["a"], peers["b"], peers["observer"]
    assert hq.subscribe(f"$share/hq/{ROOT.rsplit('/', 1)[0]}/+/+/up/#") == 1
    assert hq.subscribe(f"{ROOT}/+/status") == 1
    assert a.publish(f"{ROOT}/store-1/up/hello", b"a") == 0 and b.publish(f"{ROOT}/store-2/status", b"b") == 0
    assert sorted([hq.next_message(), hq.next_message()]) == [(f"{ROOT}/store-1/up/hello", b"a"),
                                                             (f"{ROOT}/store-2/status", b"b")]
    assert b.subscribe(f"{ROOT}/all/down/#") == 1
    assert hq.publish(f"{ROOT}/all/down/config", b"cfg") == 0
    assert b.next_message() == (f"{ROOT}/all/down/config", b"cfg")
    refused_then_marker(hq, observer, f"{ROOT}/store-1/up/batch", f"{ROOT}/store-1/down/ack")


def test_a_real_agent_with_its_store_credentials_syncs_through_hq_with_hqs(fleet: dict[str, Any], agent_factory: Any,
                                                                           tmp_path: Path) -> None:
    broker, (username, password) = fleet["broker"], fleet["users"]["store-1"]
    (tmp_path / "hq-home").mkdir()
    # A shared subscription over MQTT 3.1.1: mosquitto grants $share/ to 3.1.1 clients too.
    hq = HqProcess(tmp_path / "hq-home", broker.url.replace("mqtt://", "mqtt://posedge-hq@"), protocol="3.1.1")
    hq.args += ["--mqtt-password-file", str(fleet["home"] / "hq-password"), "--shared", "posedge-hq"]
    hq.start()
    try:
        agent = agent_factory(mqtt_keys=sync_config(broker, extra=f'username = "{username}"\n'
                                                                  f'password = "{password}"\n')).start()
        with agent.client() as client:
            sold = client.post("/v1/sales", json=sale_body(str(uuid.uuid4())))
        assert sold.status_code == 201
        wait_for(lambda: hq.sale_ids() == [sold.json()["sale_id"]], 20, f"the sale at HQ ({hq.log.read_text()})")
        with agent.client() as client:
            wait_for(lambda: client.get("/v1/status").json()["outbox"]["depth"] == 0, 20, "HQ's ack at the store")
    finally:
        hq.stop()
