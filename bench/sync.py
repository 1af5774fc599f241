"""Events per second from the outbox to HQ's database over loopback, next to raw paho in the same run.

Batched: N sale events already in an agent database (the store's writer and reader, schema and all),
drained by the sync link (sync/link.py + sync/drainer.py, `[mqtt]` defaults: 500 events or 512 KiB
of JSON a batch, zlib-compressed, 8 batches in flight) through a real mosquitto (no persistence) into
a real `posedge-hq serve`
process and its SQLite; the clock stops when HQ's `sales` table holds all N, so it includes HQ's
commits and acks and the agent's acked marks.
Raw: paho publishing the same N events' JSON one QoS 1 message per event with the same in-flight
window (8), to the same broker, the clock stopping at the last PUBACK: no HQ, no database, no ack
end to end; the plainest way to move the events, and an upper bound on what it could do.

Checkouts during a drain: a real agent process (`posedge run`) with a backlog of `--backlog` sale
events in its outbox and no broker sells (`POST /v1/sales`); then the broker
and HQ start and the till keeps selling while the backlog drains: p50/p90/p99 of the checkouts idle
(backlog, no broker) next to during the drain, and how long the drain took. The till sells 50 sales a
second in both phases (a busy store's tills together): flat out, it would race the drain for the
CPU instead. `--drain-runs` drains (3), each with a new agent and backlog, are pooled: one drain gives
about 300 checkouts, whose p99 is its third slowest. With `--separate-hq` (the default) HQ and the broker
run on another core than the agent (every one of its threads) and the POS, and HQ's database is on
tmpfs, since in a shop neither HQ's CPU nor its disk is the store PC's; the agent's database is on the
disk. `--no-separate-hq` leaves everything on every core. `--only-drain` runs the drains alone.

    .venv/bin/python bench/sync.py [--events 20000] [--backlog 100000] [--drain-runs 3] [--only-drain]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # conftest's AgentProcess
sys.path.insert(0, str(ROOT))
from tests.sync.faultproxy import FaultProxy  # noqa: E402  (the tests' own proxy: one implementation)

WINDOW = 8
PACE_PER_S = 50
TARGET_EVENTS_S = 10_000  # issue 12's targets
TARGET_SLOW_RATIO = 5.0
TARGET_P99_RATIO = 1.5
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
    """How many rows HQ's `sales` holds: max(rowid), which is the count here (the bench only inserts) and costs a
    look at the index's end, where count(*) read the whole table every 10 ms while the clock ran."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT coalesce(max(rowid), 0) FROM sales").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


def batched(home: Path, port: int, events: int, link_port: int | None = None) -> float:
    """`link_port`: where the agent's link connects (the fault proxy); HQ always talks to the broker itself."""
    home = Path(tempfile.mkdtemp(prefix="batched-", dir=home))
    config = validate_config({"store": {"tenant": "bench", "id": "s1"}, "storage": {"path": str(home / "store.db")},
                              "mqtt": {"url": f"mqtt://127.0.0.1:{link_port or port}", **MQTT_KEYS},
                              "scanners": [], "printers": []})
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
    """`port`: the broker's, or the fault proxy's in front of it."""
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


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def paced_checkout(client: httpx.Client, n: int) -> float:
    """One checkout every 1/PACE_PER_S seconds: a busy store's tills together, not a till posting flat out
    (which would race the drain for the CPU rather than show what a checkout feels during it)."""
    started = time.perf_counter()
    elapsed = checkout(client, n)
    time.sleep(max(0.0, 1 / PACE_PER_S - (time.perf_counter() - started)))
    return elapsed


def checkout(client: httpx.Client, n: int) -> float:
    body = {"sale_id": f"bench-{n:07d}", "lines": [{"sku": "6901234567892", "qty": 1, "unit_price_fen": 300}],
            "payments": [{"method": "cash", "amount_fen": 300}]}
    t0 = time.perf_counter()
    answer = client.post("/v1/sales", json=body)
    elapsed = time.perf_counter() - t0
    if answer.status_code != 201:
        raise SystemExit(f"bench: sale {n} answered {answer.status_code}: {answer.text}")
    return elapsed


# The checkout-during-drain phase's cores: ({store PC}, {HQ and broker}) when --separate-hq, else None.
# (The agent there is tests/conftest.py's AgentProcess, tenant "test": the drain's HQ is told that tenant.)
PIN: tuple[set[int], set[int]] | None = None
# Where the drain's HQ keeps its database: with --separate-hq, off the store PC's disk (tmpfs), as HQ's own
# disk is in a shop; its fsync a batch would otherwise queue with the agent's checkout commits on one device.
HQ_DB_DIR: Path | None = None


def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of `pid` on `cores`: a pid's affinity is its main thread's alone, and the threads it started
    before (the sync link, the writer, the readers) keep theirs."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def checkouts_during_drain(home: Path, backlog: int, count: int
                           ) -> tuple[list[float], list[float], float, dict[str, object]]:
    from conftest import AgentProcess

    port = free_port()
    (home / "agent" / "var").mkdir(parents=True)
    agent = AgentProcess(home / "agent", top_config="printers = []",
                         mqtt_keys=f'url = "mqtt://127.0.0.1:{port}"\nenabled = true\n'
                                                    "reconnect_max_s = 1.0\n")
    writer = StoreWriter(home / "agent" / "var" / "posedge.db")
    assert writer.start() is None
    for start in range(0, backlog, 1000):
        def fill(conn: sqlite3.Connection, start: int = start) -> None:
            for i in range(start, min(backlog, start + 1000)):
                payload = sale_payload(i)
                outbox.append_event(conn, "sale", str(payload["sale_id"]), payload)
        writer.submit(fill).result(60)
    writer.stop()
    agent.start()
    if PIN:  # the store PC: the agent and the POS (this process) on one core, the other for HQ and the broker
        assert agent.proc is not None
        pin_process(agent.proc.pid, PIN[0])
        os.sched_setaffinity(0, PIN[0])
    broker = hq = None
    try:
        with agent.client() as client:
            for n in range(50):
                checkout(client, n)
            idle: list[float] = []
            for n in range(1000, 1000 + count, 20):  # as during the drain: 20 checkouts, then a look at the status
                idle.extend(paced_checkout(client, n + k) for k in range(min(20, 1000 + count - n)))
                client.get("/v1/status").json()
            broker_home = home / "broker-drain"
            broker_home.mkdir()
            conf = broker_home / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
            broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            hq_db = (Path(tempfile.mkdtemp(prefix="hq-drain-", dir=HQ_DB_DIR)) if HQ_DB_DIR else home) / "hq.db"
            hq = subprocess.Popen([sys.executable, "-m", "posedge.hq", "serve", "--mqtt", f"mqtt://127.0.0.1:{port}",
                                   "--db", f"sqlite:///{hq_db}", "--tenant", "test"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if PIN:  # in a shop HQ and the broker are in the cloud, not on the store PC's cores
                for proc in (broker, hq):
                    os.sched_setaffinity(proc.pid, PIN[1])
            started = time.perf_counter()
            during: list[float] = []
            n = 100_000
            while True:
                during.extend(paced_checkout(client, n + k) for k in range(20))
                n += 20
                status = client.get("/v1/status").json()
                if status["outbox"]["depth"] == 0:
                    break
                for name, proc in (("mosquitto", broker), ("posedge-hq serve", hq)):
                    if proc.poll() is not None:  # e.g. the port was taken meanwhile (a shared machine)
                        raise SystemExit(f"bench: {name} exited with {proc.returncode} during the drain")
                if time.perf_counter() - started > 600:
                    raise SystemExit(f"bench: the drain did not finish within 600 s; outbox {status['outbox']}, "
                                     f"sync {status['sync']}")
            drain_s = time.perf_counter() - started
            sync_status = client.get("/v1/status").json()["sync"]
    finally:
        if PIN:
            os.sched_setaffinity(0, PIN[0] | PIN[1])
        agent.stop()
        for proc in (hq, broker):
            if proc is not None:
                proc.terminate()
                proc.wait(10)
        if HQ_DB_DIR and hq is not None:
            shutil.rmtree(hq_db.parent, ignore_errors=True)
    return idle, during, drain_s, sync_status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fault proxy's delay, each way")
    parser.add_argument("--raw-latency-events", type=int, default=800,
                        help="events raw paho sends through the proxy (a window of 8 per round trip: slow)")
    parser.add_argument("--backlog", type=int, default=100_000, help="sale events waiting when the broker comes back")
    parser.add_argument("--checkouts", type=int, default=300, help="timed checkouts while idle, each drain")
    parser.add_argument("--drain-runs", type=int, default=3,
                        help="drains of the backlog, each with a new agent: their checkouts are pooled for the "
                             "p99 (one drain gives about 300 checkouts; its p99 is the 3rd slowest)")
    parser.add_argument("--only-drain", action="store_true",
                        help="only the checkouts during the drain (the loopback and proxy rates are skipped)")
    parser.add_argument("--batch-max-events", type=int, default=None,
                        help="[mqtt] batch_max_events (default: the config's)")
    parser.add_argument("--batch-max-bytes", type=int, default=None,
                        help="[mqtt] batch_max_bytes (default: the config's)")
    parser.add_argument("--separate-hq", action=argparse.BooleanOptionalAction, default=True,
                        help="during the drain, HQ and the broker on one core, the agent and the POS on the "
                             "other, and HQ's database on tmpfs (/dev/shm), as in a shop where HQ is in the "
                             "cloud (needs 2 cores)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if args.separate_hq and len(cores) >= 2:
        global PIN
        PIN = ({cores[0]}, set(cores[1:]))
    if args.separate_hq and Path("/dev/shm").is_dir():
        global HQ_DB_DIR
        HQ_DB_DIR = Path("/dev/shm")
    if args.batch_max_events:
        MQTT_KEYS["batch_max_events"] = args.batch_max_events
    if args.batch_max_bytes:
        MQTT_KEYS["batch_max_bytes"] = args.batch_max_bytes
    if shutil.which("mosquitto") is None:
        raise SystemExit("bench: mosquitto is not installed (tools/system-deps.sh test)")
    home = Path(tempfile.mkdtemp(prefix="posedge-bench-sync-"))
    load_before = os.getloadavg()
    broker, port = start_broker(home)
    proxy = FaultProxy(port).start()
    proxy.latency(args.latency_ms / 1000)
    try:
        if not args.only_drain:
            raw_rate = raw(port, args.events)
            batched_rate = batched(home, port, args.events)
            raw_slow = raw(proxy.port, args.raw_latency_events)
            batched_slow = batched(home, port, args.events, link_port=proxy.port)
        drains = [checkouts_during_drain(home / f"drain-{run}", args.backlog, args.checkouts)
                  for run in range(args.drain_runs)]
    finally:
        proxy.stop()
        broker.kill()
        broker.wait(10)
        shutil.rmtree(home, ignore_errors=True)
    load_after = os.getloadavg()
    idle = [t for run in drains for t in run[0]]
    during = [t for run in drains for t in run[1]]
    idle_ms = [percentile(idle, q) * 1000 for q in (50, 90, 99)]
    during_ms = [percentile(during, q) * 1000 for q in (50, 90, 99)]
    p99_ratio = during_ms[2] / idle_ms[2]
    print(f"machine: {os.cpu_count()} CPUs, load average (1/5/15 min) {_load(load_before)} before, "
          f"{_load(load_after)} after; in-flight window {WINDOW} (batches / raw messages), "
          f"batch keys {MQTT_KEYS or 'default'}")
    if not args.only_drain:
        print_rates(args, raw_rate, batched_rate, raw_slow, batched_slow)
    for run, (run_idle, run_during, drain_s, sync_status) in enumerate(drains, 1):
        print(f"drain {run}/{len(drains)}: backlog of {args.backlog} events drained in {drain_s:.1f} s "
              f"({args.backlog / drain_s:,.0f} events/s, from starting the broker and HQ) while the till sold "
              f"{len(run_during)} sales; the link: {sync_status.get('batches_sent')} batches, "
              f"{sync_status.get('resends')} resends, {sync_status.get('ack_timeouts')} ack timeouts, gave way to "
              f"checkouts {sync_status.get('till_wait_s')} s; checkout p99 idle {percentile(run_idle, 99) * 1000:.1f} "
              f"ms, during {percentile(run_during, 99) * 1000:.1f} ms")
    print(f"checkout p50/p90/p99 over the {len(drains)} drains' {len(idle)} idle (backlog, no broker) and "
          f"{len(during)} draining checkouts: idle {idle_ms[0]:.1f} / {idle_ms[1]:.1f} / {idle_ms[2]:.1f} ms; "
          f"during the drain {during_ms[0]:.1f} / {during_ms[1]:.1f} / {during_ms[2]:.1f} ms; "
          f"p90 ratio {during_ms[1] / idle_ms[1]:.2f}, p99 ratio {p99_ratio:.2f}; "
          f"target <= {TARGET_P99_RATIO}x: {_met(p99_ratio <= TARGET_P99_RATIO)}; "
          + (f"store PC = CPU {sorted(PIN[0])}, HQ and broker = CPU {sorted(PIN[1])}" if PIN
             else "everything on every core (HQ and the broker compete with the store)")
          + f"; the agent's database on {home}'s disk, HQ's in {HQ_DB_DIR or home}")


def print_rates(args: argparse.Namespace, raw_rate: float, batched_rate: float, raw_slow: float,
                batched_slow: float) -> None:
    print(f"loopback, {args.events} events: outbox -> HQ's SQLite, batched, acked end to end: "
          f"{batched_rate:,.0f} events/s; raw paho, one QoS 1 message per event, PUBACK only: {raw_rate:,.0f} "
          f"events/s; ratio batched/raw {batched_rate / raw_rate:.2f}; "
          f"target >= {TARGET_EVENTS_S:,} events/s: {_met(batched_rate >= TARGET_EVENTS_S)}")
    print(f"fault proxy, {args.latency_ms:.0f} ms each way: batched ({args.events} events) {batched_slow:,.0f} "
          f"events/s; raw paho ({args.raw_latency_events} events) {raw_slow:,.0f} events/s; "
          f"ratio batched/raw {batched_slow / raw_slow:.1f}; target >= {TARGET_SLOW_RATIO}x: "
          f"{_met(batched_slow / raw_slow >= TARGET_SLOW_RATIO)}")


def _load(load: tuple[float, float, float]) -> str:
    return "/".join(f"{v:.2f}" for v in load)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"

if __name__ == "__main__":
    main()
