"""The retained status with its last will, `sync` in the status when disabled, and HQ refusing garbage."""

from __future__ import annotations

import json
import queue
import uuid
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import AgentProcess
from posedge.agent.cli.main import format_status
from tests.sync.conftest import Broker, syncing_agent, wait_for
from tests.sync.test_uplink import assert_exactly_once_in_order, post_sales, publish_raw, wait_drained


class Watcher:
    """A subscriber that collects what arrives on one topic (retained messages included)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, f"watch-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self.messages.put(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def next_with(self, state: str, deadline_s: float = 15.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            try:
                message = self.messages.get(timeout=0.1)
            except queue.Empty:
                return None
            return message if message.get("state") == state else None
        return wait_for(found, deadline_s, f"a status message with state {state}", interval=0)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("kind,protocol", [("mosquitto", "5"), ("nats", "3.1.1")],
                         ids=["mosquitto-mqtt-5", "nats-server-mqtt-3.1.1"])
def test_status_is_retained_online_and_the_last_will_says_offline_when_the_agent_dies(
        agent_factory: Any, broker_factory: Any, kind: str, protocol: str) -> None:
    broker: Broker = broker_factory(kind=kind).start()
    agent = syncing_agent(agent_factory, broker, protocol).start()
    post_sales(agent, 3)
    watcher = Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        online = watcher.next_with("online")
        assert online["v"] == 1 and online["type"] == "status" and online["agent_version"]
        assert isinstance(online["outbox_depth"], int)
        agent.kill()
        offline = watcher.next_with("offline")  # the broker's last will: the agent could not say it
        assert offline["type"] == "status"
    finally:
        watcher.close()
    late = Watcher(broker, "posedge/v1/test/store-1/status")  # a newcomer gets the retained one
    try:
        assert late.next_with("offline")["type"] == "status"
    finally:
        late.close()


def test_an_agent_set_to_mqtt_5_on_a_broker_that_speaks_only_3_1_1_says_the_broker_refused_the_version(
        agent_factory: Any, broker_factory: Any) -> None:
    broker: Broker = broker_factory(kind="nats").start()  # nats-server 2.9: MQTT 3.1.1 only
    agent = syncing_agent(agent_factory, broker, "5").start()
    assert len(post_sales(agent, 5)) == 5  # checkouts go on
    with agent.client() as client:
        wait_for(lambda: "protocol version" in str(client.get("/v1/status").json()["sync"]["last_error"]), 20,
                 f"the refusal reported ({client.get('/v1/status').json()['sync']})")
        assert client.get("/v1/status").json()["sync"]["state"] in ("connecting", "offline")


def test_hq_counts_and_drops_garbage_on_the_up_topics_and_keeps_consuming(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    publish_raw(broker, "posedge/v1/test/store-1/up/batch",
                [b"not json", b"{}", b'{"v":1,"type":"batch","tenant":"test","store":"store-1","events":[]}',
                 b"y" * 2_000_000])
    publish_raw(broker, "posedge/v1/test/store-1/up/hello", [b'{"v":1,"type":"hello"}'])
    publish_raw(broker, "posedge/v1/test/all/up/batch", [b"{}"])
    agent = syncing_agent(agent_factory, broker).start()
    sold = post_sales(agent, 10)
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)
    hq.stop()
    log = hq.log.read_text()
    for reason in ("not_json", "bad_version", "bad_field", "too_large", "bad_topic"):
        assert f"reason={reason}" in log, reason


def test_sync_is_disabled_in_the_status_when_mqtt_is_off(agent_factory: Any) -> None:
    agent: AgentProcess = agent_factory().start()  # tests/conftest.py: [mqtt] enabled = false
    with agent.client() as client:
        sync = client.get("/v1/status").json()["sync"]
    assert sync == {"state": "disabled", "last_contact": None, "last_error": None, "acked_seq": None, "stream": None}


def test_posedge_status_shows_the_sync_state_stream_and_position() -> None:
    text = format_status({"running": True, "sync": {"state": "connected", "stream": "0190-x", "acked_seq": 41,
                                                    "last_contact": "2026-12-02T05:00:00+00:00", "last_error": None}})
    assert "sync: connected stream=0190-x acked_seq=41 last_contact=2026-12-02T05:00:00+00:00" in text
    offline = format_status({"sync": {"state": "offline", "last_error": "cannot connect"}})
    assert "sync: offline - cannot connect" in offline


def test_a_silent_broker_never_blocks_a_checkout_and_is_reported(agent_factory: Any, tmp_path: Any) -> None:
    """A listener that accepts and never answers (a hung broker or proxy): sales go on; sync says why."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])  # keep it open, say nothing
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        port = listener.getsockname()[1]
        keys = f'url = "mqtt://127.0.0.1:{port}"\nenabled = true\nreconnect_max_s = 1.0\n'
        agent = agent_factory(mqtt_keys=keys).start()
        assert len(post_sales(agent, 20)) == 20
        with agent.client() as client:
            wait_for(lambda: "CONNACK" in str(client.get("/v1/status").json()["sync"]["last_error"]), 20,
                     "the silent broker reported")
            assert client.get("/v1/status").json()["outbox"]["depth"] >= 20
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
