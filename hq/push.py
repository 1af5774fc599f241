"""`posedge-hq push config`: sign a config document (sync/config_doc.py) and publish it retained for a store or
a whole tenant (docs/protocol.md 8.5).

The key is an HQ **config** key made by `posedge-hq keygen`, a different key from the code-signing keys:
stores list it under `[hq.config_keys]`, never under `[hq.public_keys]`. HQ does not check the config's
tables against the agent's schema (it does not know the agent); the store does, and answers on
`up/down_ack` (`posedge-hq tail` shows it).
"""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from posedge.hq.keys import load_minter
from posedge.sync.config_doc import ID, MAX_DOCUMENT_CHARS, sign_document
from posedge.sync.down import down_topic
from posedge.sync.protocol import Topics

PUBLISH_TIMEOUT_S = 10.0


class PushError(Exception):
    """A push that cannot be made; the message says what and why."""


def read_config_body(path: Path) -> dict[str, Any]:
    """The document's `config`: a TOML file's tables, or a JSON object of the same shape."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PushError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        body = json.loads(data) if path.suffix.lower() == ".json" else tomllib.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PushError(f"{path}: not valid {'JSON' if path.suffix.lower() == '.json' else 'TOML'}: {exc}") from None
    if not isinstance(body, dict) or not all(isinstance(v, (dict, list)) for v in body.values()):
        raise PushError(f"{path}: expected tables (an object of table -> keys), like the store's config file")
    return body


def signed_config(key: Path, kid: str, tenant: str, store: str | None, ver: int, body: dict[str, Any]) -> str:
    for name, value in (("--tenant", tenant), ("--store", store)):
        if value is not None and not ID.match(value):
            raise PushError(f"{name} {value!r}: expected an id of 1-64 A-Z a-z 0-9 _ -")
    minter = load_minter(key, kid)
    token = sign_document(minter.private_key, minter.kid, ver=ver, tenant=tenant, store=store, body=body)
    if len(token) > MAX_DOCUMENT_CHARS:
        raise PushError(f"the signed document is {len(token)} characters; stores take at most {MAX_DOCUMENT_CHARS}")
    return token


def config_topic(tenant: str, store: str | None) -> str:
    topics = Topics(tenant, store or "all")
    return down_topic(topics, "config", "store" if store else "tenant")


def publish_retained(url: str, protocol: str, topic: str, payload: bytes) -> None:
    """Publish once, QoS 1, retained; returns when the broker acknowledged it (PUBACK) or raises PushError."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise PushError(f"--mqtt {url!r}: expected mqtt://host:port")
    version = MQTTProtocolVersion.MQTTv5 if protocol == "5" else MQTTProtocolVersion.MQTTv311
    client = mqtt.Client(CallbackAPIVersion.VERSION2, f"posedge-hq-push-{uuid.uuid4().hex[:12]}", protocol=version)
    if parts.scheme == "mqtts":
        client.tls_set()
    try:
        client.connect(parts.hostname, parts.port or (8883 if parts.scheme == "mqtts" else 1883), 30)
    except OSError as exc:
        raise PushError(f"cannot reach the broker at {url}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(PUBLISH_TIMEOUT_S)
        if not info.is_published():
            raise PushError(f"the broker at {url} did not acknowledge the publish within {PUBLISH_TIMEOUT_S:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
