"""`posedge-hq tail` on the real wire: a real broker, HQ, agent and sale; what it prints is asserted line by line.

The same messages are recorded raw beside it, to show that the member id, phone, card number, amount and
payment reference it must mask really passed on the wire while it printed none of them.
"""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import threading
import time
import zlib
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from conftest import AgentProcess, sale_body
from posedge.hq.tail import SAFE_FIELDS
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for
from tests.sync.test_down_path import push, wait_ack

TENANT, STORE = "test", "store-1"
MEMBER, PHONE, CARD = "M-TAILQ", "13987654321", "8807734"
AMOUNT = 73519  # fen: a total no envelope field or size on this wire comes near
REFERENCE = "REF-QXZW"  # stored and sent masked as ****QXZW: not even its last four may be printed
PAYMENT_CODE = "134567890123456789"  # a WeChat payment code pasted as a reference: masked whole before the wire
PRINTED_KEYS = {"topic", "bytes", *SAFE_FIELDS, "records", "events", "counts", "versions"}
PROBE_TOPIC = f"posedge/v1/{TENANT}/tail-probe/status"


class Tail:
    """`posedge-hq tail --mqtt URL --tenant test` as a real process; its stdout lines in a queue."""

    def __init__(self, broker: Broker) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "posedge.hq", "tail", "--mqtt", broker.url,
                                      "--tenant", TENANT], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, encoding="utf-8")
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.printed: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def drain(self) -> list[str]:
        while True:
            try:
                self.printed.append(self.lines.get_nowait())
            except queue.Empty:
                return self.printed

    def stop(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        time.sleep(0.1)  # the reader thread hands over the last lines
        self.drain()
        return err


class Recorder:
    """A plain subscriber: what really passed on the tenant's topics, unmasked."""

    def __init__(self, broker: Broker) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, "tail-test-recorder")
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"posedge/v1/{TENANT}/#", qos=1)
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def text(self) -> str:
        """Every payload as text, a compressed batch's events inflated."""
        parts = []
        for _, payload in self.messages:
            parts.append(payload.decode("utf-8", errors="replace"))
            try:
                obj = json.loads(payload)
            except ValueError:
                continue
            if isinstance(obj, dict) and isinstance(obj.get("events_zlib"), str):
                parts.append(zlib.decompress(base64.b64decode(obj["events_zlib"])).decode("utf-8"))
        return "\n".join(parts)


def publish_probe(broker: Broker) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, "tail-test-probe")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.publish(PROBE_TOPIC, b'{"v":1,"type":"status","state":"probe"}', qos=1).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_tail_prints_envelope_fields_only_never_a_member_phone_card_amount_or_payment_reference(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    """GIVEN a broker, HQ, a syncing agent and `posedge-hq tail` on the tenant
    WHEN HQ pushes a member (id, phone, card number) and the store sells to that member, paying with a
    reference and a mistakenly pasted payment code
    THEN every line tail prints is JSON with envelope fields of its whitelist only, it saw the members document,
    the batch, its ack and the status, and none of the member id, phone, card, amount or reference is in it,
    though the raw wire carried the member id, phone, card, amount and the reference's last four."""
    broker: Broker = broker_factory().start()
    hq: HqProcess = hq_factory(broker).start()
    recorder = Recorder(broker)
    tail = Tail(broker)
    try:
        def tail_listens() -> bool:  # tail has subscribed once it prints the probe
            publish_probe(broker)
            time.sleep(0.1)
            return any(PROBE_TOPIC in line for line in tail.drain())
        wait_for(tail_listens, 30, "tail printing the probe message")

        agent: AgentProcess = agent_factory(mqtt_keys=sync_config(broker)).start()
        version = push(hq, "members", [{"member_id": MEMBER, "version": 1, "tier": "gold", "card_no": CARD,
                                        "phone": PHONE, "points": 10}])
        wait_ack(hq, "members", version)
        body = sale_body("s-tail-1", AMOUNT, member_id=MEMBER,
                         payments=[{"method": "wechat", "amount_fen": AMOUNT - 100, "reference": REFERENCE},
                                   {"method": "wechat", "amount_fen": 100, "reference": PAYMENT_CODE}])
        with agent.client() as client:
            answer = client.post("/v1/sales", json=body)
        assert answer.status_code == 201, answer.text
        wait_for(lambda: hq.sale_ids() == ["s-tail-1"], 30, "HQ holding the sale")
        wait_for(lambda: any("/down/ack" in line for line in tail.drain()), 30, "tail printing HQ's ack")
    finally:
        errors = tail.stop()
        recorder.stop()

    printed = tail.printed
    lines = [json.loads(line) for line in printed]
    for line in lines:
        extra = sorted(set(line) - PRINTED_KEYS)
        assert not extra, f"tail printed fields outside its whitelist: {extra}"
        assert line["topic"].startswith(f"posedge/v1/{TENANT}/") and isinstance(line["bytes"], int)
    by_name = {line["topic"].rsplit("/", 1)[-1]: line for line in lines}
    assert by_name["members"]["type"] == "records" and by_name["members"]["records"] == 1
    assert by_name["batch"]["type"] == "batch" and by_name["batch"]["count"] >= 1
    assert by_name["ack"]["type"] == "ack" and by_name["ack"]["acked_seq"] >= 1
    assert any(line["topic"] == f"posedge/v1/{TENANT}/{STORE}/status" and line.get("state") == "online"
               for line in lines)
    output = "".join(printed)
    wire = recorder.text()
    for secret in (MEMBER, PHONE, CARD, str(AMOUNT), "QXZW"):
        assert secret in wire, f"{secret!r} never passed on the wire: the test would prove nothing"
        assert secret not in output, f"tail printed {secret!r}"
    for secret in (PAYMENT_CODE, f"{PHONE[:3]}****{PHONE[-4:]}", PHONE[-4:]):  # nor masked forms
        assert secret not in output, f"tail printed {secret!r}"
    assert PAYMENT_CODE not in wire  # masked whole at the till, before the outbox
    assert "Traceback" not in errors
