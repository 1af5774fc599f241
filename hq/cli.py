"""`posedge-hq`: the reference HQ. `serve` consumes the stores' up path into a database and acknowledges."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import uuid
from types import FrameType
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from posedge.hq import db
from posedge.hq.consumer import Consumer
from posedge.sync.protocol import UP_SUBSCRIPTION

log = logging.getLogger("posedge.hq")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="posedge-hq", description="The reference HQ of posedge (docs/protocol.md).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="consume the stores' up batches into a database and acknowledge them")
    serve.add_argument("--mqtt", required=True, metavar="URL", help="broker, mqtt://host:port")
    serve.add_argument("--db", required=True, metavar="URL",
                       help="sqlite:///path/to/hq.db or postgresql://user:password@host:port/dbname")
    serve.add_argument("--protocol", choices=("5", "3.1.1"), default="5", help="MQTT protocol version (default 5)")
    serve.add_argument("--client-id", default=None, help="MQTT client id (default posedge-hq-<random>)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    return serve_forever(args)


def serve_forever(args: argparse.Namespace) -> int:
    parts = urlsplit(args.mqtt)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        print(f"posedge-hq: --mqtt {args.mqtt!r}: expected mqtt://host:port", file=sys.stderr)
        return 2
    refused: tuple[type[Exception], ...] = (ValueError, OSError, *db.database_errors())
    try:
        database = db.open_database(args.db)
    except refused as exc:
        print(f"posedge-hq: --db {db.masked_url(args.db)!r}: {exc}", file=sys.stderr)
        return 2
    client = _client(args)
    consumer = Consumer(database, lambda topic, payload: _publish(client, topic, payload))
    client.on_message = lambda c, u, message: consumer.on_message(message.topic, bytes(message.payload))
    client.on_connect = lambda c, u, flags, rc, props: _subscribed(c, rc)
    if parts.scheme == "mqtts":
        client.tls_set()
    client.reconnect_delay_set(1, 5)
    client.connect_async(parts.hostname, parts.port or 1883, 30)

    def stop(signum: int, frame: FrameType | None) -> None:
        client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    client.loop_forever(retry_first_connection=True)
    log.info("event=hq_stopped counts=%s", consumer.summary())
    database.close()
    return 0


def _client(args: argparse.Namespace) -> mqtt.Client:
    client_id = args.client_id or f"posedge-hq-{uuid.uuid4().hex[:12]}"
    if args.protocol == "5":
        return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, protocol=MQTTProtocolVersion.MQTTv5)
    return mqtt.Client(CallbackAPIVersion.VERSION2, client_id, clean_session=True,
                       protocol=MQTTProtocolVersion.MQTTv311)


def _subscribed(client: mqtt.Client, reason_code: object) -> None:
    log.info("event=hq_connected reason=%s", reason_code)
    client.subscribe(UP_SUBSCRIPTION, qos=1)


def _publish(client: mqtt.Client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1)
