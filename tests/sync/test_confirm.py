"""Online coupon confirmation through HQ and HQ's double-redemption verdicts, with real parts only.

`mosquitto` on a free port, `posedge-hq serve` and `posedge run` as processes (two agents as two stores of
one tenant), coupons signed with the key the stores list. HQ stopped (SIGSTOP: silent; SIGTERM: gone)
or the broker stopped: the till's offline policy answers the sale.
"""

from __future__ import annotations

import re
import signal
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import AgentProcess, sale_body
from posedge.hq.coupons import answer_confirm
from posedge.hq.db import open_database
from posedge.hq.keys import public_key_line
from posedge.sync.codes import CodeMinter
from posedge.sync.down import ConfirmRequest
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for
from tests.sync.test_uplink import post_sales, publish_raw, sync_status, wait_drained

ROUNDS = 4
REQUEST_NO = re.compile(r"^(store-[12])-t1-(\d{13,})$")


@pytest.fixture
def minter() -> CodeMinter:
    return CodeMinter("hq-confirm", Ed25519PrivateKey.generate())


def store_agent(agent_factory: Callable[..., AgentProcess], broker: Broker, minter: CodeMinter, store: str,
                coupons: str = "") -> AgentProcess:
    """A syncing agent as `store` (the root conftest names every agent store-1), trusting `minter`'s key."""
    agent = agent_factory(extra_config=f"[hq.public_keys]\n{public_key_line(minter)}\n[coupons]\n{coupons}\n",
                          mqtt_keys=sync_config(broker))
    text = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(text.replace('id = "store-1"', f'id = "{store}"', 1), encoding="utf-8")
    return agent


def coupon_sale(token: str, sale_id: str | None = None) -> dict[str, Any]:
    """1000 fen with a 100 fen coupon, paid 900, at till t1."""
    body = sale_body(sale_id or str(uuid.uuid4()), 1000, till="t1", coupons=[token])
    body["payments"] = [{"method": "cash", "amount_fen": 900}]
    return body


def sell(agent: AgentProcess, body: dict[str, Any]) -> httpx.Response:
    with agent.client() as client:
        return client.post("/v1/sales", json=body)


def till_status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()["till"]


def ready(agents: list[AgentProcess], hq: HqProcess) -> None:
    """Each store's outbox drained: HQ subscribed and answered (an ack), so a confirmation reaches it."""
    for agent in agents:
        post_sales(agent, 1)
        wait_drained(agent)


def test_two_stores_racing_for_one_coupon_one_wins_and_the_other_hears_already_redeemed(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    # A generous timeout: the test is about who wins, not about how fast HQ answers on a shared machine.
    stores = [store_agent(agent_factory, broker, minter, s, "confirm_timeout_ms = 5000").start()
              for s in ("store-1", "store-2")]
    ready(stores, hq)
    for round_no in range(ROUNDS):
        token = minter.coupon(f"RACE-{round_no}", "cmp-race", off=100)
        answers: dict[int, httpx.Response] = {}
        start = threading.Barrier(2)

        def post(index: int) -> None:
            start.wait(10)
            answers[index] = sell(stores[index], coupon_sale(token))

        threads = [threading.Thread(target=post, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        codes = sorted(a.status_code for a in answers.values())
        assert codes == [201, 422], [a.text for a in answers.values()]
        won = next(a.json() for a in answers.values() if a.status_code == 201)
        lost = next(a.json() for a in answers.values() if a.status_code == 422)
        assert won["coupons"][0]["mode"] == "online"
        assert lost["code"] == "hq_refused" and lost["reason"] == "already_redeemed", lost
        assert lost["coupon_id"] == f"RACE-{round_no}"
        winner = "store-1" if answers[0].status_code == 201 else "store-2"
        assert hq.query("SELECT store_id FROM coupon_redemptions WHERE coupon_id = ?", f"RACE-{round_no}") == [
            (winner,)]
    numbers = [r[0] for r in hq.query("SELECT request_no FROM coupon_confirmations")]
    assert len(numbers) == 2 * ROUNDS == len(set(numbers))
    assert all(REQUEST_NO.match(n) for n in numbers), numbers
    for agent in stores:
        assert till_status(agent)["confirmer"].startswith("online")
        assert till_status(agent)["last_hq_contact_at"] is not None  # HQ's answers are contact


def test_hq_silent_gone_or_the_broker_down_the_offline_policy_answers_the_sale(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = store_agent(agent_factory, broker, minter, "store-1", "confirm_timeout_ms = 300").start()
    ready([agent], hq)
    # HQ answers within the 300 ms: online. On a busy machine a round trip (the first above all) can take
    # longer; then the offline policy answers, as it should, and the next coupon tries again.
    for attempt in range(3):
        first = sell(agent, coupon_sale(minter.coupon(f"C-ONLINE-{attempt}", off=100)))
        if first.status_code == 201 and first.json()["coupons"][0]["mode"] == "online":
            break
        assert (first.status_code == 422 and first.json()["code"] == "offline_limit") or (
            first.status_code == 201 and first.json()["coupons"][0]["mode"] == "offline"), first.text
    assert first.status_code == 201 and first.json()["coupons"][0]["mode"] == "online", first.text

    assert hq.proc is not None
    hq.proc.send_signal(signal.SIGSTOP)  # HQ holds its connection and says nothing
    try:
        silent = sell(agent, coupon_sale(minter.coupon("C-SILENT", off=100)))
    finally:
        hq.proc.send_signal(signal.SIGCONT)
    assert silent.status_code == 201 and silent.json()["coupons"][0]["mode"] == "offline", silent.text
    wait_for(lambda: "coupon_confirm_reply_ignored" in agent.log_text() and "why=late" in agent.log_text(), 15,
             "HQ's late answer logged and ignored")

    hq.stop()
    gone = sell(agent, coupon_sale(minter.coupon("C-GONE", off=100)))
    assert gone.status_code == 201 and gone.json()["coupons"][0]["mode"] == "offline", gone.text

    broker.stop()
    wait_for(lambda: sync_status(agent)["state"] != "connected", 15, "the agent saw the broker go")
    assert till_status(agent)["confirmer"].startswith("unreachable: the MQTT link is not connected")
    down = sell(agent, coupon_sale(minter.coupon("C-DOWN", off=100)))
    assert down.status_code == 201 and down.json()["coupons"][0]["mode"] == "offline", down.text
    assert till_status(agent)["offline_redemptions"] == 3

    agent.stop()  # request numbers survive a restart: the next is still new
    agent.start()
    broker.start()
    hq.start()
    wait_for(lambda: sync_status(agent)["state"] == "connected", 30, "reconnected")
    wait_drained(agent)
    after = sell(agent, coupon_sale(minter.coupon("C-AFTER", off=100)))
    assert after.status_code == 201 and after.json()["coupons"][0]["mode"] == "online", after.text
    numbers = [r[0] for r in hq.query("SELECT request_no FROM coupon_confirmations ORDER BY answered_at")]
    assert len(numbers) == len(set(numbers)) >= 3
    seqs = [int(REQUEST_NO.match(n).group(2)) for n in numbers]  # type: ignore[union-attr]
    assert seqs == sorted(seqs)


def test_a_coupon_accepted_offline_at_two_stores_gets_hqs_verdict_at_both(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    coupons = "confirm_timeout_ms = 200\n[coupons.offline]\nmax_hours_since_hq = 0"
    stores = [store_agent(agent_factory, broker, minter, s, coupons).start() for s in ("store-1", "store-2")]
    ready(stores, hq)
    hq.stop()
    token = minter.coupon("C-TWICE", off=100)
    for agent in stores:
        answer = sell(agent, coupon_sale(token))
        assert answer.status_code == 201 and answer.json()["coupons"][0]["mode"] == "offline", answer.text
    hq.start()

    def verdict_at(agent: AgentProcess) -> dict[str, Any] | None:
        found = [v for v in till_status(agent)["coupon_verdicts"] if v["coupon_id"] == "C-TWICE"]
        return found[0] if found else None

    for agent, other in ((stores[0], "store-2"), (stores[1], "store-1")):
        verdict = wait_for(lambda: verdict_at(agent), 30, f"the verdict at {agent.home.name}")
        assert verdict["verdict"] == "double_redemption" and verdict["other_store"] == other
        assert verdict["mode"] == "offline" and verdict["sale_id"]
    assert hq.query("SELECT count(*) FROM coupon_double_redemptions WHERE notified_at IS NOT NULL") == [(1,)]


def test_garbage_on_down_confirm_is_counted_and_the_store_keeps_confirming(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = store_agent(agent_factory, broker, minter, "store-1", "confirm_timeout_ms = 5000").start()
    ready([agent], hq)
    reply = ('{{"v":1,"type":"confirm_reply","msg_id":"m1","tenant":"test","store":"{store}","reply_to":"r1",'
             '"request_no":"store-1-t1-1","accepted":{accepted}}}')
    garbage = [b"not json", b"[]", b'{"v":2,"type":"confirm_reply"}', b"x" * 10_000,
               reply.format(store="store-2", accepted="true").encode(),
               reply.format(store="store-1", accepted='"yes"').encode()]
    publish_raw(broker, "posedge/v1/test/store-1/down/confirm", garbage)
    stray = reply.format(store="store-1", accepted="true").encode()
    publish_raw(broker, "posedge/v1/test/all/down/confirm", [stray])
    # A well-formed answer to nothing this agent asked: logged, not counted, nothing else.
    publish_raw(broker, "posedge/v1/test/store-1/down/confirm", [stray])
    wait_for(lambda: sum(sync_status(agent)["rejected_down"].values()) >= len(garbage) + 1, 15,
             f"every garbage reply counted ({sync_status(agent)['rejected_down']})")
    rejected = sync_status(agent)["rejected_down"]
    assert rejected["not_json"] == 1 and rejected["too_large"] == 1 and rejected["wrong_store"] == 1
    assert rejected["bad_field"] == 1 and rejected["wrong_scope"] == 1 and rejected["bad_version"] == 1
    wait_for(lambda: "why=no such request waiting" in agent.log_text(), 10, "the stray reply logged")
    assert sum(sync_status(agent)["rejected_down"].values()) == len(garbage) + 1
    answer = sell(agent, coupon_sale(minter.coupon("C-AFTER-GARBAGE", off=100)))
    assert answer.status_code == 201 and answer.json()["coupons"][0]["mode"] == "online", answer.text


def test_hq_gives_the_same_request_number_the_same_answer_first_redemption_wins(tmp_path: Path) -> None:
    database = open_database(f"sqlite:///{tmp_path / 'hq.db'}")

    def ask(store: str, number: str, sale: str) -> tuple[bool, str | None]:
        request = ConfirmRequest(str(uuid.uuid4()), "test", store, number, "C1", "cmp", 100, "t1", sale)
        answer = answer_confirm(database, request)
        return answer.accepted, answer.reason

    assert ask("store-1", "store-1-t1-1", "s1") == (True, None)
    assert ask("store-2", "store-2-t1-1", "s2") == (False, "already_redeemed")
    assert ask("store-1", "store-1-t1-1", "s1") == (True, None)  # asked again: the same answer
    assert ask("store-2", "store-2-t1-1", "s2") == (False, "already_redeemed")
    assert ask("store-1", "store-1-t1-2", "s3") == (True, None)  # its own store may ask anew (a retried sale)
    assert database.execute("SELECT count(*) FROM coupon_confirmations").rows == [(3,)]
    database.close()
