"""Events per second from the outbox to HQ's database over loopback, next to raw paho in the same run.

Batched: N sale events already in an agent database (the store's writer and reader, schema and all),
drained by the sync link (sync/link.py + sync/drainer.py, `[mqtt]` defaults: 500 events or 512 KiB
of JSON a batch, zlib-compressed, 8 batches in flight) through a real mosquitto (no persistence) into a real `posedge-hq serve`
process and its SQLite; the clock stops when HQ's `sales` table holds all N, so it includes HQ's
commits and acks and the agent's acked marks.
Raw: paho publishing the same N events' JSON one QoS 1 message per event with the same in-flight
window (8), to the same broker, the clock stopping at the last PUBACK: no HQ, no database, no ack
end to end; the plainest way to move the events, and an upper bound on what it could do.

    .venv/bin/python bench/sync.py [--events 20000]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from posedge.agent.config import validate_config
from posedge.agent.hq_sync.feature import StoreOutbox, ensure_stream, link_settings
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.sync import outbox
from posedge.sync.drainer import Drainer, DrainSettings
from posedge.sync.encoding import dumps_bytes
from posedge.sync.link import Link
from posedge.sync.protocol import Topics

WINDOW = 8
MQTT_KEYS: dict[str, object] = {}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sale_payload(i: int) -> dict[str, object]:
    sale_id = str(uuid.uuid4())
    return {"sale_id": sale_id, "receipt_no": f"20261202-{i:05d}", "gross_fen": 300, "discount_fen": 0,
            "total_fen": 300, "paid_fen": 300, "change_fen": 0, "tenant": "bench", "store_id": "s1",
            "business_day": "20261202", "till": "T1", "cashier": "c1", "member_id": None,
            "lines": [{"sku": "6901234567892", "name": "矿泉水 550ml", "qty": 1, "unit": "pcs", "unit_price_fen": 300,
                       "discount_fen": 0, "amount_fen": 300}],
            "payments": [{"method": "cash", "amount_fen": 300, "reference": None}]}


def start_broker(home: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = home / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 100\n"
                    "max_queued_messages 1000000\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(lambda: _listening(port), 10)
    return proc, port


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def wait(predicate: object, deadline_s: float) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise SystemExit(f"bench: timed out after {deadline_s} s")


def hq_count(db: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT count(*) FROM sales").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def batched(home: Path, port: int, events: int) -> float:
    config = validate_config({"store": {"tenant": "bench", "id": "s1"}, "storage": {"path": str(home / "store.db")},
                              "mqtt": {"url": f"mqtt://127.0.0.1:{port}", **MQTT_KEYS}, "scanners": [], "printers": []})
    writer = StoreWriter(config.storage.path)
    assert writer.start() is None
    reader = StoreReader(config.storage.path)
    for start in range(0, events, 1000):
        def fill(conn: sqlite3.Connection, start: int = start) -> None:
            for i in range(start, min(events, start + 1000)):
                payload = sale_payload(i)
                outbox.append_event(conn, "sale", str(payload["sale_id"]), payload)
        writer.submit(fill).result(60)
    stream = writer.submit(lambda conn: ensure_stream(conn, None)).result(10)
    hq_db = home / "hq.db"
    hq = subprocess.Popen([sys.executable, "-m", "posedge.hq", "serve", "--mqtt", f"mqtt://127.0.0.1:{port}",
                           "--db", f"sqlite:///{hq_db}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait(hq_db.exists, 15)
    time.sleep(0.5)  # HQ subscribed
    mqtt_config = config.mqtt
    topics = Topics("bench", "s1")
    drainer = Drainer(topics, StoreOutbox(config, reader, writer, stream),
                      DrainSettings(mqtt_config.batch_max_events, mqtt_config.batch_max_bytes,
                                    mqtt_config.inflight_batches, mqtt_config.ack_timeout_s), "bench")
    link = Link(link_settings(config), topics, drainer, lambda: {"agent_version": "bench"})
    started = time.perf_counter()
    link.start()
    wait(lambda: hq_count(hq_db) >= events, 600)
    elapsed = time.perf_counter() - started
    link.stop()
    hq.terminate()
    hq.wait(10)
    writer.stop()
    reader.close()
    return events / elapsed


def raw(port: int, events: int) -> float:
    payloads = [dumps_bytes({"seq": i + 1, "event_id": str(uuid.uuid4()), "kind": "sale", "payload": sale_payload(i)})
                for i in range(events)]
    done = threading.Event()
    acked = [0]

    def on_publish(client: mqtt.Client, userdata: object, mid: int, reason: object, props: object) -> None:
        acked[0] += 1
        if acked[0] >= events:
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, "bench-raw")
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    started = time.perf_counter()
    for payload in payloads:
        client.publish("posedge/v1/bench/raw/up/event", payload, qos=1)
    if not done.wait(600):
        raise SystemExit("bench: raw publishing did not finish")
    elapsed = time.perf_counter() - started
    client.disconnect()
    client.loop_stop()
    return events / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--batch-max-events", type=int, default=None, help="[mqtt] batch_max_events (default: the config's)")
    parser.add_argument("--batch-max-bytes", type=int, default=None, help="[mqtt] batch_max_bytes (default: the config's)")
    args = parser.parse_args()
    if args.batch_max_events:
        MQTT_KEYS["batch_max_events"] = args.batch_max_events
    if args.batch_max_bytes:
        MQTT_KEYS["batch_max_bytes"] = args.batch_max_bytes
    if shutil.which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed (tools/system-deps.sh test)")
    home = Path(tempfile.mkdtemp(prefix="posedge-bench-sync-"))
    broker, port = start_broker(home)
    try:
        raw_rate = raw(port, args.events)
        batched_rate = batched(home, port, args.events)
    finally:
        broker.kill()
        broker.wait(10)
        shutil.rmtree(home, ignore_errors=True)
    print(f"events: {args.events}, in-flight window {WINDOW} (batches / raw messages), batch keys {MQTT_KEYS or 'default'}")
    print(f"outbox -> HQ's SQLite, batched, acked end to end: {batched_rate:,.0f} events/s")
    print(f"raw paho, one QoS 1 message per event, PUBACK only: {raw_rate:,.0f} events/s")
    print(f"ratio batched/raw: {batched_rate / raw_rate:.2f}")


if __name__ == "__main__":
    main()
