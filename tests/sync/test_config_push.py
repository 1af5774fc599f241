"""Config pushed by HQ, end to end with real parts: our own mosquitto, a real agent process, the real
`posedge-hq keygen` and `posedge-hq push config`. Applied live (only what changed is re-created), merged
store over tenant over file, every refusal reported in the status and up to HQ as a down_ack, kept on disk
for a restart without a broker, and a tampered file on disk refused at start."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from conftest import AgentProcess, sale_body
from posedge.agent.cli.main import format_status
from posedge.sync.codes import _segment, b64url_encode
from posedge.sync.config_doc import CONFIG_TYP, sign_document
from tests.sync.conftest import Broker, sync_config, wait_for
from tests.sync.test_status_and_garbage import Watcher as _Watcher

TOPIC = "posedge/v1/test/store-1/down/config"
TENANT_TOPIC = "posedge/v1/test/all/down/config"
ACKS = "posedge/v1/test/store-1/up/down_ack"


class Watcher(_Watcher):
    """The status tests' watcher, returned only once its subscription is granted (nothing published before
    that is missed)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.granted = False
        super().__init__(broker, topic)
        self.client.on_subscribe = lambda *args: setattr(self, "granted", True)
        wait_for(self.client.is_connected, 10, "the watcher connected")
        self.client.subscribe(topic, qos=1)  # again, now that its grant is seen
        wait_for(lambda: self.granted, 10, f"subscribed to {topic}")


def hq(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "posedge.hq", *args], capture_output=True, text=True, timeout=60)


def keygen(directory: Path, kid: str) -> tuple[Path, str]:
    """A config key from the real `posedge-hq keygen`: (key file, the line for [hq.config_keys])."""
    made = hq("keygen", "--out", str(directory), "--kid", kid)
    assert made.returncode == 0, made.stderr
    return directory / f"{kid}.pem", made.stdout.strip()


def push(broker: Broker, key: Path, ver: int, tables: str, tmp: Path, store: str | None = "store-1",
         kid: str = "cfg-1", tenant: str = "test") -> subprocess.CompletedProcess[str]:
    file = tmp / f"push-{store}-{ver}-{time.monotonic_ns()}.toml"
    file.write_text(tables, encoding="utf-8")
    scope = ["--store", store] if store else []
    done = hq("push", "config", "--tenant", tenant, *scope, "--key", str(key), "--kid", kid, "--ver", str(ver),
              "--mqtt", broker.url, str(file))
    assert done.returncode == 0, done.stderr
    return done


def publish(broker: Broker, topic: str, payload: bytes, retain: bool = False) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, f"craft-{time.monotonic_ns()}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def config_agent(agent_factory: Any, broker: Broker, home: Path, key_line: str, scanner_port: int | None = None,
                 extra: str = "") -> AgentProcess:
    agent: AgentProcess = agent_factory(
        home=home, mqtt_keys=sync_config(broker, extra="status_min_interval_s = 0.2"),
        top_config=f'printers = [{{type = "file", name = "receipts", path = "{home / "receipts"}"}}]',
        extra_config=f"[hq.config_keys]\n{key_line}\n{extra}")
    if scanner_port is not None:  # a TCP scanner the test keeps one connection to (a restart would drop it)
        text = agent.config.read_text(encoding="utf-8")
        agent.config.write_text(text.replace("scanners = []", 'scanners = [{type = "tcp", name = "gun", '
                                             f'mode = "listen", port = {scanner_port}}}]', 1), encoding="utf-8")
    return agent


def config_status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()["config"]


def wait_config(agent: AgentProcess, wanted: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    return wait_for(lambda: (lambda c: c if wanted(c) else None)(config_status(agent)), 20, what)


def receipt_bytes(agent: AgentProcess, receipt_no: str, directory: str = "receipts") -> bytes:
    path = agent.home / directory / f"{receipt_no}.bin"
    return wait_for(lambda: path.exists() and path.stat().st_size > 0 and path.read_bytes(), 20, f"{path} printed")


def sell(agent: AgentProcess) -> str:
    with agent.client() as client:
        answer = client.post("/v1/sales", json=sale_body())
    assert answer.status_code == 201, answer.text
    return answer.json()["receipt"]["receipt_no"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pushes_apply_live_merge_store_over_tenant_and_a_printers_change_recreates_only_printers(
        agent_factory: Any, broker_factory: Any, tmp_path: Path) -> None:
    broker: Broker = broker_factory().start()
    key, line = keygen(tmp_path / "keys", "cfg-1")
    gun_port = free_port()
    agent = config_agent(agent_factory, broker, tmp_path / "store", line, scanner_port=gun_port).start()
    acks, statuses = Watcher(broker, ACKS), Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        assert config_status(agent)["version"] == 0
        gun = wait_for(lambda: _connect(gun_port), 10, "the TCP scanner listening")
        gun.sendall(b"6901234567892\n")
        before = wait_for(lambda: (lambda d: d if d["counters"].get("scans") == 1 else None)(_device(agent)), 10,
                          "the first scan counted")

        # the tenant's document: a footer and a coupon rule for every store
        push(broker, key, 4, '[receipt]\nfooter = ["TENANT-FOOTER"]\n[coupons]\nmax_per_sale = 3\n', tmp_path,
             store=None)
        acks.next_matching(lambda m: m["scope"] == "tenant" and m["result"] == "applied" and m["version"] == 4,
                           "the tenant document acknowledged applied")
        assert b"TENANT-FOOTER" in receipt_bytes(agent, sell(agent))

        # the store's document wins over the tenant's for the footer, and adds a printer
        push(broker, key, 2, '[receipt]\nfooter = ["STORE-FOOTER"]\n\n[[printers]]\ntype = "file"\nname = "receipts"\n'
             f'path = "{agent.home / "receipts"}"\n\n[[printers]]\ntype = "file"\nname = "kitchen"\n'
             f'path = "{agent.home / "kitchen"}"\n', tmp_path)
        acks.next_matching(lambda m: m["scope"] == "store" and m["result"] == "applied" and m["version"] == 2,
                           "the store document acknowledged applied")
        printed = receipt_bytes(agent, sell(agent))
        assert b"STORE-FOOTER" in printed and b"TENANT-FOOTER" not in printed
        with agent.client() as client:
            status = client.get("/v1/status").json()
        assert [p["name"] for p in status["receipts"]["printers"]] == ["receipts", "kitchen"]
        config = status["config"]
        assert config["version"] == 4 and config["scopes"]["tenant"]["ver"] == 4
        assert config["scopes"]["store"]["ver"] == 2 and config["rejected"] is None

        # the scanner was not restarted: same driver, same connection, still counting
        gun.sendall(b"6901234567892\n")
        after = wait_for(lambda: (lambda d: d if d["counters"].get("scans") == 2 else None)(_device(agent)), 10,
                         "the second scan on the same connection counted")
        assert after["since"] == before["since"] and after["counters"]["connections"] == 1
        gun.close()

        statuses.next_matching(lambda m: m.get("config_version") == 4, "the retained status's config_version")
        text = format_status({"running": True, **status})
        assert "config: version 4 (pushed: tenant v4, store v2)" in text
        assert (agent.home / "var" / "pushed-config" / "store.jws").stat().st_mode & 0o777 == 0o600
    finally:
        acks.close()
        statuses.close()


def _connect(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


def _device(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()["devices"][0]


def hand_signed(key: Ed25519PrivateKey, header: dict[str, Any], payload: dict[str, Any]) -> bytes:
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}".encode()


def test_every_refusal_is_reported_in_the_status_and_up_to_hq_and_nothing_is_applied(
        agent_factory: Any, broker_factory: Any, tmp_path: Path) -> None:
    broker: Broker = broker_factory().start()
    key_file, line = keygen(tmp_path / "keys", "cfg-1")
    loaded = serialization.load_pem_private_key(key_file.read_bytes(), None)
    assert isinstance(loaded, Ed25519PrivateKey)
    key, stranger = loaded, Ed25519PrivateKey.generate()
    agent = config_agent(agent_factory, broker, tmp_path / "store", line).start()
    acks = Watcher(broker, ACKS)

    def signed(ver: int, body: dict[str, Any], signer: Ed25519PrivateKey = key, kid: str = "cfg-1",
               tenant: str = "test", store: str | None = "store-1") -> bytes:
        return sign_document(signer, kid, ver=ver, tenant=tenant, store=store, body=body).encode()

    def refused(payload: bytes, reason: str, ver: int | None, mentions: tuple[str, ...] = (),
                topic: str = TOPIC) -> None:
        publish(broker, topic, payload)
        ack = acks.next_matching(lambda m: m["result"] == "rejected", f"a rejected down_ack ({reason})")
        assert (ack["kind"], ack["reason"], ack["version"]) == ("config", reason, ver), ack
        rejected = config_status(agent)["rejected"]
        assert (rejected["reason"], rejected["ver"], rejected["source"]) == (reason, ver, "hq"), rejected
        for text in mentions:
            assert text in rejected["message"], rejected["message"]

    try:
        push(broker, key_file, 5, "[coupons]\nmax_per_sale = 2\n", tmp_path)
        acks.next_matching(lambda m: m["result"] == "applied" and m["version"] == 5, "v5 applied")

        refused(signed(6, {"coupons": {"max_per_sale": 4}}, signer=stranger), "bad_signature", 6)
        refused(signed(6, {}, kid="cfg-unknown"), "unknown_kid", 6)
        refused(hand_signed(key, {"alg": "ES256", "kid": "cfg-1", "typ": CONFIG_TYP},
                            {"ver": 6, "iat": 1, "tenant": "test", "store": "store-1", "config": {}}), "bad_alg", 6)
        refused(signed(5, {"coupons": {"max_per_sale": 4}}), "stale_version", 5, ("not newer than 5",))
        refused(signed(3, {}), "stale_version", 3)
        refused(signed(6, {}, store="store-2"), "wrong_store", 6)
        refused(signed(6, {}, store=None), "wrong_store", 6)  # a tenant-wide document on the store's topic
        refused(signed(6, {}, tenant="other"), "wrong_tenant", 6)
        refused(b"{not a jws", "malformed", None)
        refused(hand_signed(key, {"alg": "EdDSA", "kid": "cfg-1", "typ": CONFIG_TYP},
                            {"ver": 6, "tenant": "test", "store": "store-1", "config": {}}), "malformed", 6)
        # the schema, with the file's own field-level messages
        refused(signed(6, {"coupons": {"max_per_sale": 99}}), "invalid_config", 6,
                ("coupons.max_per_sale", "less than or equal to 20"))
        refused(signed(6, {"coupons": {"max_per_sael": 1}}), "invalid_config", 6,
                ("coupons.max_per_sael", "did you mean 'max_per_sale'"))
        # what may never be pushed: identity, the local API, secrets
        refused(signed(6, {"store": {"id": "store-9"}}), "invalid_config", 6, ("store: cannot be pushed",))
        refused(signed(6, {"api": {"listen": "0.0.0.0:8765"}}), "invalid_config", 6, ("api: cannot be pushed",))
        refused(signed(6, {"mqtt": {"url": "mqtt://elsewhere:1883"}}), "invalid_config", 6, ("mqtt: cannot",))
        refused(signed(6, {"members": {"phone_hash_key": "guess"}}), "invalid_config", 6,
                ("members.phone_hash_key: cannot be pushed",))
        refused(signed(6, {"hq": {"config_keys": {}}}), "invalid_config", 6, ("hq.config_keys: cannot be pushed",))

        status = config_status(agent)
        assert status["version"] == 5 and status["scopes"]["store"]["ver"] == 5 and status["rejected_count"] == 17
        with agent.client() as client:
            assert client.get("/v1/health").json()["status"] == "ok"  # the agent kept serving
        assert "last refused: invalid_config" in format_status({"running": True, "config": status})
    finally:
        acks.close()


def test_a_restart_without_broker_runs_the_pushed_config_from_disk_and_a_tampered_file_is_refused(
        agent_factory: Any, broker_factory: Any, tmp_path: Path) -> None:
    broker: Broker = broker_factory().start()
    key, line = keygen(tmp_path / "keys", "cfg-1")
    home = tmp_path / "store"
    agent = config_agent(agent_factory, broker, home, line).start()
    push(broker, key, 7, '[receipt]\nfooter = ["FROM-DISK"]\n', tmp_path)
    wait_config(agent, lambda c: c["version"] == 7, "v7 applied")
    assert agent.stop() == 0
    broker.kill()

    again = agent.start()  # the same store and file; no broker now
    try:
        status = config_status(again)
        assert status["version"] == 7 and status["scopes"]["store"]["ver"] == 7 and status["rejected"] is None
        assert b"FROM-DISK" in receipt_bytes(again, sell(again))
    finally:
        assert again.stop() == 0

    stored = home / "var" / "pushed-config" / "store.jws"
    head, payload, signature = stored.read_text().strip().split(".")
    forged = json.loads(__import__("base64").urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["config"]["receipt"]["footer"] = ["FORGED"]
    stored.write_text(f"{head}.{_segment(forged)}.{signature}\n")
    again.start()
    try:
        status = config_status(again)
        assert status["version"] == 0 and status["scopes"]["store"] is None
        assert (status["rejected"]["reason"], status["rejected"]["source"]) == ("bad_signature", "disk")
        printed = receipt_bytes(again, sell(again))
        assert b"FORGED" not in printed and b"FROM-DISK" not in printed  # the file config runs
    finally:
        again.stop()
