"""The retained status with its last will and the store's state (printers, scanners, outbox) on change,
rate-limited; `sync` in the status when disabled; and HQ refusing garbage."""

from __future__ import annotations

import json
import queue
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import AgentProcess, sale_body
from posedge.agent.cli.main import format_status
from tests.receipts.printer_server import TcpPrinter
from tests.scanners.conftest import Pty
from tests.sync.conftest import Broker, sync_config, syncing_agent, wait_for
from tests.sync.test_uplink import assert_exactly_once_in_order, post_sales, publish_raw, wait_drained


class Watcher:
    """A subscriber that collects what arrives on one topic (retained messages included)."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.arrivals: list[tuple[float, dict[str, Any]]] = []  # (monotonic time it arrived, message)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, f"watch-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda c, u, m: self._arrived(json.loads(m.payload))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def _arrived(self, message: dict[str, Any]) -> None:
        self.arrivals.append((time.monotonic(), message))
        self.messages.put(message)

    def next_with(self, state: str, deadline_s: float = 15.0) -> dict[str, Any]:
        return self.next_matching(lambda m: m.get("state") == state, f"a status message with state {state}",
                                  deadline_s)

    def next_matching(self, wanted: Callable[[dict[str, Any]], bool], what: str,
                      deadline_s: float = 15.0) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        def found() -> dict[str, Any] | None:
            try:
                message = self.messages.get(timeout=0.1)
            except queue.Empty:
                return None
            seen.append(message)
            return message if wanted(message) else None
        try:
            return wait_for(found, deadline_s, what, interval=0)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; seen: {seen[-3:]}") from None

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


PRINTER_AND_SCANNER = """
[[printers]]
type = "network"
name = "front"
host = "127.0.0.1"
port = {port}
timeout_s = 0.5
idle_status_interval_s = 0.2

[[scanners]]
type = "serial"
name = "counter"
port = "{tty}"
"""


def printer_and_scanner_agent(agent_factory: Any, broker: Broker, printer: TcpPrinter, pair: Pty,
                              min_interval_s: float) -> AgentProcess:
    keys = sync_config(broker, extra=f"status_min_interval_s = {min_interval_s}\n")
    agent: AgentProcess = agent_factory(PRINTER_AND_SCANNER.format(port=printer.port, tty=pair.link), mqtt_keys=keys)
    agent.config.write_text(agent.config.read_text().replace("scanners = []\n", ""))
    return agent.start()


def printer_is(name: str, state: str, problem: str | None) -> Callable[[dict[str, Any]], bool]:
    return lambda m: {"name": name, "state": state, "problem": problem} in m.get("printers", [])


def scanner_is(name: str, state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda m: {"name": name, "state": state} in m.get("scanners", [])


def test_the_retained_status_shows_a_printer_out_of_paper_and_an_unplugged_scanner_and_their_recovery(
        agent_factory: Any, broker_factory: Any, tmp_path: Path) -> None:
    broker: Broker = broker_factory().start()
    printer, pair = TcpPrinter().start(), Pty(tmp_path / "by-id-counter")
    watcher = Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        agent = printer_and_scanner_agent(agent_factory, broker, printer, pair, min_interval_s=0.5)
        first = watcher.next_matching(scanner_is("counter", "connected"), "the scanner connected")
        assert first["state"] == "online" and first["config_version"] == 0 and first["hours_since_hq"] is None
        assert first["offline_redemptions_pending"] == 0 and isinstance(first["outbox_depth"], int)
        assert (first["outbox_depth"] == 0) == (first["oldest_pending_age_s"] is None)
        printer.paper_out = True
        watcher.next_matching(printer_is("front", "waiting", "paper_out"), "the printer out of paper")
        pair.unplug()
        gone = watcher.next_matching(scanner_is("counter", "disconnected"), "the scanner unplugged")
        assert printer_is("front", "waiting", "paper_out")(gone)  # still: a new status repeats what holds
        printer.paper_out = False
        pair.plug()
        back = watcher.next_matching(lambda m: printer_is("front", "ready", None)(m)
                                     and scanner_is("counter", "connected")(m), "printer and scanner back")
        assert back["state"] == "online"
        agent.stop()
    finally:
        watcher.close()
        printer.stop()
        pair.unplug()
    late = Watcher(broker, "posedge/v1/test/store-1/status")  # a clean stop leaves the offline one retained
    try:  # said at the stop, after the scanners were closed (the stop's first step), so: stopped
        assert late.next_with("offline")["scanners"] == [{"name": "counter", "state": "stopped"}]
    finally:
        late.close()


def test_a_burst_of_changes_publishes_a_bounded_number_of_statuses_and_the_last_is_the_final_state(
        agent_factory: Any, broker_factory: Any) -> None:
    """Every sale changes the outbox depth (no HQ here: nothing is acked); with status_min_interval_s = 2
    a burst of them yields at most one status per 2 s of the burst (plus the connect's and a periodic one),
    and the last one published carries the final depth."""
    broker: Broker = broker_factory().start()
    interval = 2.0
    agent = agent_factory(mqtt_keys=sync_config(broker, extra=f"status_min_interval_s = {interval}\n")).start()
    watcher = Watcher(broker, "posedge/v1/test/store-1/status")
    try:
        watcher.next_with("online")
        began = time.monotonic()
        sold = 0
        with agent.client() as client:
            while time.monotonic() - began < 3 * interval:  # a burst spanning several intervals
                assert client.post("/v1/sales", json=sale_body(f"burst-{sold}", 100)).status_code == 201
                sold += 1
                time.sleep(0.05)
            status = client.get("/v1/status").json()
            depth = status["outbox"]["depth"]
            assert depth >= sold
            final = watcher.next_matching(lambda m: m.get("outbox_depth") == depth, f"a status with depth {depth}")
            ended = time.monotonic()
        during = [m for at, m in list(watcher.arrivals) if began <= at <= ended]
        assert len(during) <= (ended - began) / interval + 3, [m["outbox_depth"] for m in during]
        depths = [m["outbox_depth"] for m in during]
        assert depths == sorted(depths) and depths[-1] == depth  # each a state of its moment, the last the final
        assert final["offline_redemptions_pending"] == status["till"]["offline_redemptions"]
        assert final["oldest_pending_age_s"] is not None
    finally:
        watcher.close()


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
    # Garbage published before HQ's SUBACK reaches nobody: wait for HQ's online (logged after it).
    wait_for(lambda: "event=hq_online" in hq.log.read_text(), 30, "HQ subscribed")
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


def test_posedge_status_shows_hq_presence_and_the_commands_from_hq() -> None:
    presence = {"state": "online", "since": "2026-12-02T05:00:00+00:00"}
    text = format_status({"running": True, "sync": {"state": "connected", "hq": presence},
                          "commands": {"results": {"ok": 2, "refused": 1}, "refused": {"replayed": 1},
                                       "last": {"cmd_id": "c-1", "cmd": "rotate_token", "result": "refused",
                                                "reason": "replayed", "at": "2026-12-02T05:01:00+00:00"}}})
    assert "  HQ: online since 2026-12-02T05:00:00+00:00" in text
    assert ("commands from HQ: 2 ok, 1 refused; last rotate_token refused (replayed) at 2026-12-02T05:01:00+00:00"
            in text)
    quiet = format_status({"running": True, "commands": {"results": {}, "refused": {}, "last": None}})
    assert "commands from HQ" not in quiet and "HQ:" not in quiet


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
