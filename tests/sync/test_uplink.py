"""Every sale the POS got a 2xx for reaches HQ exactly once, in seq order, through a real mosquitto."""

from __future__ import annotations

import uuid
from typing import Any

from conftest import AgentProcess, sale_body
from tests.sync.conftest import Broker, HqProcess, syncing_agent, wait_for


def post_sales(agent: AgentProcess, count: int) -> list[str]:
    ids = []
    with agent.client() as client:
        for _ in range(count):
            sale_id = str(uuid.uuid4())
            response = client.post("/v1/sales", json=sale_body(sale_id))
            assert response.status_code in (200, 201), response.text
            ids.append(sale_id)
    return ids


def sync_status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()["sync"]


def assert_exactly_once_in_order(hq: HqProcess, sale_ids: list[str]) -> None:
    at_hq = hq.sale_ids()
    assert sorted(at_hq) == sorted(sale_ids), f"{len(at_hq)} at HQ, {len(set(at_hq))} distinct, {len(sale_ids)} sold"
    assert at_hq == sale_ids  # HQ applies in seq order, and seq follows commit order
    seqs = [r[0] for r in hq.query("SELECT seq FROM events WHERE kind = 'sale' ORDER BY seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # no gap


def wait_all_at_hq(hq: HqProcess, agent: AgentProcess, count: int, deadline_s: float = 30.0) -> None:
    wait_for(lambda: len(hq.sale_ids()) >= count, deadline_s,
             f"{count} sales at HQ (has {len(hq.sale_ids())}; agent log: {agent.log_text()[-2000:]})")


def test_sales_made_while_the_broker_is_down_reach_hq_exactly_once_when_it_starts(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory()
    agent = syncing_agent(agent_factory, broker).start()
    sold = post_sales(agent, 60)
    status = sync_status(agent)
    assert status["state"] in ("connecting", "offline") and status["last_error"]

    broker.start()
    hq = hq_factory(broker).start()
    wait_all_at_hq(hq, agent, len(sold))
    assert_exactly_once_in_order(hq, sold)
    wait_drained(agent)
    status = sync_status(agent)
    assert status["state"] == "connected" and status["last_contact"] and status["stream"]
    assert status["acked_seq"] == hq.query("SELECT max(seq) FROM events")[0][0]


def wait_drained(agent: AgentProcess, deadline_s: float = 15.0) -> None:
    def drained() -> bool:
        with agent.client() as client:
            return client.get("/v1/status").json()["outbox"]["depth"] == 0
    wait_for(drained, deadline_s, f"the agent's outbox empty (sync: {sync_status(agent)})")
