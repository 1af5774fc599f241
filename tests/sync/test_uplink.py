"""Every sale the POS got a 2xx for reaches HQ exactly once, in seq order, through a real broker.

Real parts only: `mosquitto` on a free port (stopped, restarted, SIGKILLed; the broker tests also run on
`nats-server`'s MQTT listener, a second implementation), `posedge run` and `posedge-hq serve` as
processes, HQ's SQLite read by the test. A `Seller` thread keeps selling while something is killed, so
the kill always lands mid-drain; a sale whose answer was lost to a kill is "uncertain": it may be at HQ
(committed) or not (rolled back), never twice.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import SLOW, AgentProcess, sale_body
from tests.sync.conftest import Broker, HqProcess, PostgresCluster, syncing_agent, wait_for

SALES = 2000 if SLOW else 150  # per kill test, before and after the kill together


class Seller(threading.Thread):
    """A POS that keeps selling: ids with a 2xx in `sold`, ids whose answer was lost in `uncertain`."""

    def __init__(self, agent: AgentProcess, limit: int = SALES) -> None:
        super().__init__(daemon=True)
        self.agent, self.limit = agent, limit
        self.sold: list[str] = []
        self.uncertain: set[str] = set()
        self.halt = threading.Event()

    def run(self) -> None:
        with self.agent.client() as client:
            while not self.halt.is_set() and len(self.sold) < self.limit:
                sale_id = str(uuid.uuid4())
                try:
                    response = client.post("/v1/sales", json=sale_body(sale_id))
                except httpx.TransportError:
                    self.uncertain.add(sale_id)
                    time.sleep(0.05)
                    continue
                if response.status_code in (200, 201):
                    self.sold.append(sale_id)
                else:
                    self.uncertain.add(sale_id)
                    time.sleep(0.05)

    def finish(self, deadline_s: float = 60.0) -> list[str]:
        self.join(deadline_s)
        assert not self.is_alive(), "the seller did not finish"
        return self.sold


def post_sales(agent: AgentProcess, count: int) -> list[str]:
    seller = Seller(agent, count)
    seller.run()
    assert not seller.uncertain
    return seller.sold


def sync_status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()["sync"]


def wait_drained(agent: AgentProcess, deadline_s: float = 30.0) -> None:
    def drained() -> bool:
        with agent.client() as client:
            return client.get("/v1/status").json()["outbox"]["depth"] == 0
    wait_for(drained, deadline_s,
             f"the agent's outbox empty (sync: {sync_status(agent)}; log {agent.log_text()[-1500:]})")


def assert_exactly_once_in_order(hq: HqProcess, sold: list[str],
                                 uncertain: frozenset[str] | set[str] = frozenset()) -> None:
    at_hq = hq.sale_ids()
    assert len(at_hq) == len(set(at_hq)), "a sale twice at HQ"
    missing = set(sold) - set(at_hq)
    assert not missing, f"{len(missing)} sales with a 2xx are not at HQ"
    assert set(at_hq) <= set(sold) | set(uncertain), "HQ holds a sale the POS never made"
    assert [s for s in at_hq if s in set(sold)] == sold, "HQ applied the sales out of order"
    for stream, first in hq.query("SELECT stream, first_seq FROM streams"):
        seqs = [r[0] for r in hq.query("SELECT seq FROM events WHERE stream = ? ORDER BY seq", stream)]
        assert seqs == list(range(first, first + len(seqs))), f"a gap in stream {stream}"
        assert seqs[-1] == hq.query("SELECT acked_seq FROM streams WHERE stream = ?", stream)[0][0]


@pytest.mark.parametrize("kind,protocol,hq_db",
                         [("mosquitto", "5", "sqlite"), ("mosquitto", "3.1.1", "sqlite"), ("nats", "3.1.1", "sqlite"),
                          ("mosquitto", "5", "postgresql")], indirect=["hq_db"],
                         ids=["mosquitto-mqtt-5", "mosquitto-mqtt-3.1.1", "nats-server-mqtt-3.1.1", "hq-on-postgresql"])
def test_sales_made_while_the_broker_is_down_reach_hq_exactly_once_when_it_starts(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, kind: str, protocol: str, hq_db: str | None) -> None:
    broker: Broker = broker_factory(kind=kind)
    agent = syncing_agent(agent_factory, broker, protocol).start()
    sold = post_sales(agent, 60)
    status = sync_status(agent)
    assert status["state"] in ("connecting", "offline") and status["last_error"]
    assert status["stream"] and status["acked_seq"] == 0 and status["last_contact"] is None

    broker.start()
    hq = hq_factory(broker, protocol, hq_db).start()
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)
    status = sync_status(agent)
    assert status["state"] == "connected" and status["last_contact"] and status["protocol"] == protocol
    assert status["acked_seq"] == hq.query("SELECT max(seq) FROM events")[0][0]
    assert status["stream"] == hq.query("SELECT stream FROM streams")[0][0]


@pytest.mark.parametrize("kind,persistence,protocol",
                         [("mosquitto", True, "5"), ("mosquitto", False, "5"), ("mosquitto", False, "3.1.1"),
                          ("nats", True, "3.1.1")],
                         ids=["persistent-broker", "broker-without-persistence", "mqtt-3.1.1-without-persistence",
                              "nats-server-mqtt-3.1.1"])
def test_broker_killed_mid_drain_loses_no_sale_and_duplicates_none(agent_factory: Any, broker_factory: Any,
                                                                   hq_factory: Any, kind: str, persistence: bool,
                                                                   protocol: str) -> None:
    broker: Broker = broker_factory(persistence=persistence, kind=kind).start()
    hq = hq_factory(broker, protocol).start()
    agent = syncing_agent(agent_factory, broker, protocol).start()
    seller = Seller(agent)
    seller.start()
    wait_for(lambda: len(hq.sale_ids()) >= SALES // 4, 30, "the drain started")
    broker.kill()
    wait_for(lambda: len(seller.sold) >= SALES // 2, 30, "sales while the broker is dead")
    broker.start()
    sold = seller.finish()
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)


def test_agent_killed_mid_drain_resends_from_hqs_position(agent_factory: Any, broker_factory: Any,
                                                          hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = syncing_agent(agent_factory, broker).start()
    seller = Seller(agent)
    seller.start()
    wait_for(lambda: len(hq.sale_ids()) >= SALES // 4, 30, "the drain started")
    agent.kill()
    agent.start()
    sold = seller.finish()
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold, seller.uncertain)


@pytest.mark.parametrize("hq_db", ["sqlite", "postgresql"], indirect=True)
def test_hq_killed_mid_drain_applies_every_sale_once_after_it_restarts(agent_factory: Any, broker_factory: Any,
                                                                       hq_factory: Any, hq_db: str | None) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker, db_url=hq_db).start()
    agent = syncing_agent(agent_factory, broker).start()
    seller = Seller(agent)
    seller.start()
    wait_for(lambda: len(hq.sale_ids()) >= SALES // 4, 30, "the drain started")
    hq.kill()
    wait_for(lambda: len(seller.sold) >= SALES // 2, 30, "sales while HQ is dead")
    hq.start()
    sold = seller.finish()
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)
    assert sync_status(agent)["resends"] >= 1


def publish_raw(broker: Broker, topic: str, payloads: list[bytes]) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, f"garbage-{uuid.uuid4().hex[:8]}")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def test_garbage_on_the_ack_topic_is_counted_and_ignored_and_sync_goes_on(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = syncing_agent(agent_factory, broker).start()
    sold = post_sales(agent, 20)
    wait_drained(agent)
    stream = sync_status(agent)["stream"]
    ack = ('{{"v":1,"type":"ack","msg_id":"m","tenant":"{tenant}","store":"{store}","stream":"{stream}",'
           '"acked_seq":{seq}{more}}}')
    garbage = [
        b"not json", b"\xff\xfe\x00", b"[]", b"{}", b'{"v":2,"type":"ack"}', b"x" * 100_000,
        ack.format(tenant="test", store="other", stream=stream, seq=1, more="").encode(),
        ack.format(tenant="evil", store="store-1", stream=stream, seq=1, more="").encode(),
        ack.format(tenant="test", store="store-1", stream="not-a-uuid", seq=1, more="").encode(),
        ack.format(tenant="test", store="store-1", stream=stream, seq=-1, more="").encode(),
        ack.format(tenant="test", store="store-1", stream=stream, seq='"9"', more="").encode(),
        ack.format(tenant="test", store="store-1", stream=stream, seq=3, more=',"gap_from":2').encode(),
        ack.format(tenant="test", store="store-1", stream=stream, seq=3, more=',"error":"reboot"').encode(),
        ack.format(tenant="test", store="store-1", stream=str(uuid.uuid4()), seq=5, more="").encode(),
    ]
    publish_raw(broker, "posedge/v1/test/store-1/down/ack", garbage)
    wait_for(lambda: sum(sync_status(agent)["rejected_acks"].values()) >= len(garbage), 15,
             f"every garbage ack counted ({sync_status(agent)['rejected_acks']})")
    status = sync_status(agent)
    assert status["rejected_acks"]["not_json"] >= 2 and status["rejected_acks"]["too_large"] == 1
    assert status["rejected_acks"]["wrong_store"] == 1 and status["rejected_acks"]["other_stream"] == 1
    assert status["stream"] == stream and status["state"] == "connected"  # nothing of it was taken as an ack
    more = post_sales(agent, 20)
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold + more)


def copy_database(source: Path, target: Path) -> None:
    src = sqlite3.connect(source)
    dst = sqlite3.connect(target)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()


def test_a_restored_backup_starts_a_new_stream_and_no_sale_is_lost_or_doubled(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, tmp_path: Path) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = syncing_agent(agent_factory, broker).start()
    db = agent.home / "var" / "posedge.db"
    before = post_sales(agent, 30)
    wait_drained(agent)
    copy_database(db, tmp_path / "backup.db")  # last night's backup
    lost_locally = post_sales(agent, 30)  # reached HQ, then the disk died
    wait_drained(agent)
    old_stream = sync_status(agent)["stream"]
    agent.stop()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(tmp_path / "backup.db", db)  # the marker file beside it survived: same stream as the backup
    os.chmod(db, 0o600)
    broker.stop()  # the store sells offline after the restore, past HQ's position for the old stream
    agent.start()
    after = post_sales(agent, 45)
    broker.start()
    wait_drained(agent)
    status = sync_status(agent)
    assert status["stream"] != old_stream and status["stream_reason"] == "seq_conflict"
    assert_exactly_once_in_order(hq, before + lost_locally + after)


def test_a_replaced_database_is_a_new_stream_that_hq_starts_from_its_own_first_seq(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = syncing_agent(agent_factory, broker).start()
    first = post_sales(agent, 20)
    wait_drained(agent)
    agent.stop()
    shutil.rmtree(agent.home / "var" / "receipts", ignore_errors=True)
    for path in (agent.home / "var").glob("posedge.db*"):
        path.unlink()  # a fresh database (a replaced store PC): seq starts at 1 again
    agent.start()
    second = post_sales(agent, 20)
    wait_drained(agent)
    assert_exactly_once_in_order(hq, first + second)
    streams = hq.query("SELECT first_seq, acked_seq FROM streams ORDER BY first_seen_at")
    assert len(streams) == 2 and streams[1][0] == 1  # not acknowledged from the old stream's position


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="repeated broker kills over a long drain: POSEDGE_SLOW=1")
def test_a_broker_killed_again_and_again_during_a_long_drain_loses_and_doubles_nothing(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory(persistence=False).start()
    hq = hq_factory(broker).start()
    agent = syncing_agent(agent_factory, broker).start()
    seller = Seller(agent, 5000)
    seller.start()
    for kill in range(1, 6):
        wait_for(lambda: len(seller.sold) >= kill * 800, 60, f"sales before kill {kill}")
        broker.kill()
        time.sleep(0.5)  # sales go on while the broker is away
        broker.start()
    sold = seller.finish(120)
    wait_drained(agent, 60)
    assert_exactly_once_in_order(hq, sold)


def test_two_hq_workers_on_one_postgresql_apply_each_sale_once_and_ack_no_gap(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, postgres: PostgresCluster) -> None:
    """Both workers get every batch (plain subscriptions): the stream row's lock makes one apply, one see duplicates."""
    broker: Broker = broker_factory().start()
    db_url = postgres.new_database()
    first = hq_factory(broker, db_url=db_url).start()
    second = hq_factory(broker, db_url=db_url).start()
    agent = syncing_agent(agent_factory, broker).start()
    seller = Seller(agent)
    seller.start()
    wait_for(lambda: len(first.sale_ids()) >= SALES // 4, 30, "the drain started")
    second.kill()  # one worker dies mid-drain; the other goes on alone
    sold = seller.finish()
    wait_drained(agent)
    assert_exactly_once_in_order(first, sold)
    assert first.query("SELECT count(*) FROM events")[0][0] == first.query("SELECT max(seq) FROM events")[0][0]


@pytest.mark.parametrize("url,expected", [
    ("mysql://hq@127.0.0.1/hq", "expected sqlite:///path/to/hq.db or postgresql://"),
    ("postgresql://hq:s3cret@127.0.0.1:1/hq", "postgresql://hq:***@127.0.0.1:1/hq"),
], ids=["unknown-scheme", "postgresql-unreachable"])
def test_hq_refuses_a_database_url_it_cannot_use_with_a_clear_message_and_no_password(
        tmp_path: Path, url: str, expected: str) -> None:
    result = subprocess.run([sys.executable, "-m", "posedge.hq", "serve", "--mqtt", "mqtt://127.0.0.1:1", "--db", url],
                            cwd=tmp_path, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert expected in result.stderr and "s3cret" not in result.stderr
