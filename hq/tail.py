"""`posedge-hq tail`: what passes on the wire, one JSON line per message, masked.

Only the envelope's bookkeeping is printed (topic, type, kind, version, counts, sequence numbers, result and
reason codes, state, size): never a record's or an event's content, so no phone, no member name, no payment
reference reaches the terminal. Member ids appear only inside topics' payloads, which are not printed.
"""

from __future__ import annotations

import json
import sys
import uuid
from typing import Any, TextIO

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from posedge.sync.protocol import ROOT

# Envelope fields that say nothing about a person: the only ones printed.
SAFE_FIELDS = ("type", "kind", "scope", "version", "count", "result", "reason", "state", "stream", "first_seq",
               "max_seq", "acked_seq", "gap_from", "error", "compression", "accepted", "outbox_depth")


def summary(topic: str, payload: bytes) -> dict[str, Any]:
    line: dict[str, Any] = {"topic": topic, "bytes": len(payload)}
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        parts = payload.split(b".")
        line["type"] = "jws" if len(parts) == 3 and len(payload) < 65_536 else "not_json"
        return line
    if not isinstance(obj, dict):
        line["type"] = f"json_{type(obj).__name__}"
        return line
    for key in SAFE_FIELDS:
        value = obj.get(key)
        if isinstance(value, (int, str, bool)) and len(str(value)) <= 64:
            line[key] = value
    if isinstance(obj.get("records"), list):
        line["records"] = len(obj["records"])
    if isinstance(obj.get("events"), list):
        line["events"] = len(obj["events"])
    if isinstance(obj.get("counts"), dict):
        line["counts"] = {k: v for k, v in obj["counts"].items() if isinstance(v, int) and len(str(k)) <= 32}
    if isinstance(obj.get("versions"), dict):
        line["versions"] = obj["versions"]
    return line


def tail(url_host: str, port: int, tenant: str | None, protocol: str, count: int | None,
         out: TextIO = sys.stdout) -> int:
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, f"posedge-hq-tail-{uuid.uuid4().hex[:8]}", protocol=version)
    seen = 0

    def arrived(c: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        nonlocal seen
        out.write(json.dumps(summary(message.topic, bytes(message.payload)), ensure_ascii=False) + "\n")
        out.flush()
        seen += 1
        if count is not None and seen >= count:
            c.disconnect()

    client.on_message = arrived
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{ROOT}/{tenant or '+'}/+/#", qos=1)
    client.connect(url_host, port, 30)
    try:
        client.loop_forever()
    except KeyboardInterrupt:
        client.disconnect()
    return 0
