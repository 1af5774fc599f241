"""Several `posedge-hq serve --shared GROUP` workers share the uplink (an MQTT shared subscription, so each batch
goes to one worker) and one PostgreSQL. One store's batches land on different workers at once; the stream
row's lock (SELECT ... FOR UPDATE in hq/db.py) orders them, and each worker acks only what it committed.

While a seller keeps selling and one of three workers is SIGKILLed mid-drain, a watcher samples the agent's
acked position and then HQ's committed position: the first may never be ahead of the second (an ack is
published after COMMIT, and the agent takes the highest ack it got, so an ack that arrives late changes
nothing). Both MQTT versions: mosquitto gives `$share/` to 3.1.1 clients too (the 3.1.1 run here is the slow
variant, POSEDGE_SLOW=1; test_broker_acl.py's HQ shares its subscription over 3.1.1 in the default run).
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import SLOW
from tests.sync.conftest import Broker, HqProcess, PostgresCluster, syncing_agent, wait_for
from tests.sync.test_uplink import SALES, Seller, assert_exactly_once_in_order, sync_status, wait_drained


class AckWatcher(threading.Thread):
    """Samples (agent's acked_seq, then HQ's committed acked_seq) until stopped; records any sample where the agent
    is ahead. Agent first: HQ's position only grows, so a later read of it can only be higher."""

    def __init__(self, agent: Any, hq: HqProcess) -> None:
        super().__init__(daemon=True)
        self.agent, self.hq = agent, hq
        self.samples = 0
        self.ahead: list[tuple[int, int]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.02):
            status = sync_status(self.agent)
            acked, stream = status.get("acked_seq"), status.get("stream")
            if acked is None or stream is None:
                continue
            rows = self.hq.query("SELECT acked_seq FROM streams WHERE stream = ?", stream)
            held = rows[0][0] if rows else 0
            self.samples += 1
            if acked > held:
                self.ahead.append((acked, held))


def batches_applied(hq: HqProcess) -> int:
    found = re.findall(r"event=hq_stopped counts=\{[^}]*'batches': (\d+)", hq.log.read_text(errors="replace"))
    return int(found[-1]) if found else 0


@pytest.mark.parametrize("protocol", ["5", pytest.param("3.1.1", marks=[
    pytest.mark.slow, pytest.mark.skipif(not SLOW, reason="the same over MQTT 3.1.1: POSEDGE_SLOW=1")])])
def test_three_shared_workers_one_sigkilled_mid_drain_apply_each_sale_once_and_never_ack_ahead(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, postgres: PostgresCluster, protocol: str) -> None:
    broker: Broker = broker_factory().start()
    db_url = postgres.new_database()
    workers = [hq_factory(broker, protocol=protocol, db_url=db_url) for _ in range(3)]
    for worker in workers:
        worker.args += ["--shared", "posedge-hq"]
    with ThreadPoolExecutor(3) as pool:  # three interpreters starting at once, not one after the other
        list(pool.map(HqProcess.start, workers))
    agent = syncing_agent(agent_factory, broker, protocol).start()
    watcher = AckWatcher(agent, workers[0])
    watcher.start()
    seller = Seller(agent)
    seller.start()
    wait_for(lambda: len(workers[0].sale_ids()) >= SALES // 4, 60, "the drain started")
    workers[1].kill()  # mid-drain: what it held uncommitted is resent by the agent after its ack timeout
    sold = seller.finish(120)
    wait_drained(agent, 60)
    watcher.halt.set()
    watcher.join(10)
    assert watcher.samples > 10 and not watcher.ahead, f"the agent's ack ran ahead of HQ: {watcher.ahead[:5]}"
    assert_exactly_once_in_order(workers[0], sold)
    for survivor in (workers[0], workers[2]):
        survivor.stop()
    assert batches_applied(workers[0]) > 0 and batches_applied(workers[2]) > 0, "the uplink was not shared"
