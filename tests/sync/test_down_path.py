"""The down path end to end (docs/protocol.md section 8): `posedge-hq push` writes HQ's down log, the real
`posedge-hq serve` publishes it, the real agent applies it through the till's apply logic and answers with
down_acks that HQ records; a store that was offline gets what it missed (its persistent session, or HQ's
resend on its versions when the broker lost the queue)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from conftest import AgentProcess, sale_body
from posedge.hq import keys
from posedge.sync.codes import CodeMinter
from posedge.sync.down import RECORD_KINDS, Records, build_records
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for
from tests.sync.test_uplink import assert_exactly_once_in_order, post_sales, publish_raw, wait_drained

TENANT, STORE = "test", "store-1"


def push(hq: HqProcess, kind: str, lines: list[Any], store: str | None = STORE) -> int:
    """`posedge-hq push KIND` as a real process against the serve's database; returns the version."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n"
    args = [sys.executable, "-m", "posedge.hq", "push", kind, "-", "--db", hq.db_url, "--tenant", TENANT]
    done = subprocess.run([*args, *(["--store", store] if store else [])], input=text, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["version"])


def acks(hq: HqProcess, kind: str) -> list[tuple[Any, ...]]:
    return hq.query("SELECT scope, version, result, reason, counts FROM down_acks WHERE kind = ? ORDER BY at",
                    kind)


def wait_ack(hq: HqProcess, kind: str, version: int, result: str = "applied",
             scope: str = "store") -> tuple[Any, ...]:
    def found() -> tuple[Any, ...] | None:
        return next((a for a in acks(hq, kind) if a[:3] == (scope, version, result)), None)
    ack: tuple[Any, ...] = wait_for(found, 30, f"HQ holds the {result} down_ack of {kind} v{version} "
                                               f"(acks: {acks(hq, kind)}; log {hq.log.read_text()[-1500:]})")
    return ack


def agent_with_keys(agent_factory: Callable[..., AgentProcess], broker: Broker, minter: CodeMinter,
                    protocol: str = "5", extra: str = "") -> AgentProcess:
    return agent_factory(f"[hq.public_keys]\n{keys.public_key_line(minter)}\n",
                         mqtt_keys=sync_config(broker, protocol, extra))


@pytest.fixture
def minter(tmp_path: Path) -> CodeMinter:
    return keys.write_key(tmp_path / "hq-keys", "hq-test")[1]


def get(agent: AgentProcess, path: str, **params: Any) -> Any:
    with agent.client() as client:
        return client.get(path, params=params)


def test_every_record_kind_pushed_at_hq_is_applied_by_the_store_and_acknowledged(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = agent_with_keys(agent_factory, broker, minter).start()
    with agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("s-member", 500, member_id="M-1")).status_code == 201

    v = push(hq, "members", [{"member_id": "M-1", "version": 3, "tier": "gold", "card_no": "8800001",
                              "phone": "13812345678", "points": 1200},
                             {"member_id": "bad id with spaces", "version": 1}])
    assert wait_ack(hq, "members", v)[4] == json.dumps({"applied": 1, "ignored": 0, "invalid": 1},
                                                       separators=(",", ":"))
    member = get(agent, "/v1/members/lookup", code="8800001").json()
    assert member["member_id"] == "M-1" and member["tier"] == "gold" and member["phone_masked"] == "138****5678"
    assert member["points_balance"] >= 1200

    wait_ack(hq, "stock", push(hq, "stock", [{"sku": "6901234567892", "version": 1, "qty": 40}]))
    assert get(agent, "/v1/inventory/6901234567892").json()["on_hand"] == 40 - 1  # the sale above took one

    wait_ack(hq, "pickups", push(hq, "pickups", [{"order_id": "PO-1", "version": 1, "state": "ready",
                                                  "items": [{"sku": "6901234567892", "qty": 2}]}]))
    assert get(agent, "/v1/pickups/PO-1").json()["state"] == "ready"

    revoked = minter.coupon("C-REV", "CMP-1", off=100, exp=2_000_000_000)
    elsewhere = minter.coupon("C-ELSE", "CMP-1", off=100, exp=2_000_000_000)
    fine = minter.coupon("C-OK", "CMP-1", off=100, exp=2_000_000_000)
    assert get(agent, "/v1/coupons/validate", code=revoked).json()["valid"] is True
    wait_ack(hq, "revocations", push(hq, "revocations", [{"scope": "coupon", "ref": "C-REV", "version": 1}],
                                     store=None), scope="tenant")
    refused = get(agent, "/v1/coupons/validate", code=revoked).json()
    assert refused["valid"] is False and refused["reason"] == "revoked"

    wait_ack(hq, "coupons", push(hq, "coupons", [
        {"coupon_id": "C-ELSE", "version": 2, "status": "redeemed", "store_id": "store-9"},
        {"coupon_id": "C-OK", "version": 1, "status": "issued", "campaign": "CMP-1"}]))
    assert get(agent, "/v1/coupons/validate", code=elsewhere).json()["reason"] == "already_redeemed"
    assert get(agent, "/v1/coupons/validate", code=fine).json()["valid"] is True

    wait_ack(hq, "verdicts", push(hq, "verdicts", [{"coupon_id": "C-X", "version": 1,
                                                    "verdict": "double_redemption", "other_store": "store-2"}]))
    verdicts = get(agent, "/v1/status").json()["till"]["coupon_verdicts"]
    assert [v["coupon_id"] for v in verdicts] == ["C-X"]

    wait_ack(hq, "erase", push(hq, "erase", ["M-1"]))
    assert get(agent, "/v1/members/lookup", code="8800001").status_code == 404
    sale = get(agent, "/v1/sales/s-member").json()
    assert sale["member_id"].startswith("erased-") and sale["total_fen"] == 500  # the books keep the sale
    assert "M-1" not in json.dumps(sale)

    again = push(hq, "members", [{"member_id": "M-1", "version": 3, "tier": "gold", "card_no": "8800001"}])
    wait_ack(hq, "members", again)  # a replay of what the store had before the erasure: not brought back
    assert get(agent, "/v1/members/lookup", code="8800001").status_code == 404
    assert get(agent, "/v1/status").json()["sync"]["rejected_down"] == {}


def test_a_store_offline_while_hq_pushes_gets_the_documents_from_its_session_or_from_hq_on_its_versions(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter) -> None:
    broker: Broker = broker_factory(persistence=False).start()
    hq = hq_factory(broker).start()
    agent = agent_with_keys(agent_factory, broker, minter).start()
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["state"] == "connected", 20, "connected")
    agent.stop()

    # 1. The broker keeps the session: what HQ publishes while the store is away is queued for it.
    stock = push(hq, "stock", [{"sku": "SKU-Q", "version": 1, "qty": 7}])
    wait_for(lambda: hq.query("SELECT published_at FROM down_documents WHERE kind = 'stock'")[0][0], 20,
             "HQ published the stock document")
    agent.start()
    wait_ack(hq, "stock", stock)
    assert get(agent, "/v1/inventory/SKU-Q").json()["on_hand"] == 7
    assert get(agent, "/v1/status").json()["sync"]["session_present"] is True
    agent.stop()

    # 2. The broker restarts without persistence: the queue and the session are gone; the store's versions
    # on connect make HQ resend what it lacks (both scopes).
    members = push(hq, "members", [{"member_id": "M-9", "version": 1, "card_no": "8800009"}])
    tenant_stock = push(hq, "stock", [{"sku": "SKU-T", "version": 1, "qty": 3}], store=None)
    wait_for(lambda: len(hq.query("SELECT 1 FROM down_documents WHERE published_at IS NOT NULL")) == 3, 20,
             "HQ published both documents")
    # The store comes back before HQ does, so its versions on connect reach nobody: HQ's retained presence
    # (all/down/hq, a new session) makes it say them again once HQ is subscribed (docs/protocol.md 8.9).
    hq.stop()
    broker.stop()
    broker.start()
    agent.start()
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["state"] == "connected", 20, "connected")
    hq.start()
    wait_ack(hq, "members", members)
    wait_ack(hq, "stock", tenant_stock, scope="tenant")
    assert get(agent, "/v1/members/lookup", code="8800009").json()["member_id"] == "M-9"
    assert get(agent, "/v1/inventory/SKU-T").json()["on_hand"] == 3
    assert get(agent, "/v1/status").json()["sync"]["session_present"] is False
    assert [a[2] for a in acks(hq, "stock")].count("applied") == 2  # each document applied once
    assert get(agent, "/v1/status").json()["sync"]["hq"]["state"] == "online"


def hq_state(agent: AgentProcess) -> str:
    return str(get(agent, "/v1/status").json()["sync"]["hq"]["state"])


def test_the_store_shows_hq_online_and_offline_and_refuses_garbage_on_the_hq_topic(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    agent = agent_factory(mqtt_keys=sync_config(broker)).start()
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["state"] == "connected", 30, "connected")
    assert get(agent, "/v1/status").json()["sync"]["hq"] == {"state": "unknown", "since": None}
    hq = hq_factory(broker)
    hq.args += ["--tenant", TENANT]  # a new HQ database knows no tenant yet
    hq.start()
    wait_for(lambda: hq_state(agent) == "online", 30, "the store sees HQ online")
    assert get(agent, "/v1/status").json()["sync"]["hq"]["since"]
    hq.stop()  # a clean stop says offline
    wait_for(lambda: hq_state(agent) == "offline", 30, "the store sees HQ offline after its clean stop")
    hq.start()
    wait_for(lambda: hq_state(agent) == "online", 30, "the store sees HQ online again")
    hq.kill()  # no goodbye: the broker publishes HQ's last will
    wait_for(lambda: hq_state(agent) == "offline", 30, "the store sees HQ's last will")

    hq_topic = f"posedge/v1/{TENANT}/all/down/hq"
    good = {"v": 1, "type": "hq", "msg_id": "g", "tenant": TENANT, "state": "online", "hq_session": "x",
            "at": "2026-12-02T10:00:00+00:00"}
    publish_raw(broker, hq_topic, [b"\x00not json{", json.dumps({**good, "state": "maybe"}).encode(),
                                   json.dumps({**good, "at": "2026-12-02T10:00:00"}).encode(),
                                   json.dumps({**good, "tenant": "other"}).encode()])
    publish_raw(broker, f"posedge/v1/{TENANT}/{STORE}/down/hq", [json.dumps(good).encode()])  # tenant-wide only
    expected = {"not_json": 1, "bad_field": 2, "wrong_tenant": 1, "bad_topic": 1}
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["rejected_down"] == expected, 30,
             f"the garbage counted ({get(agent, '/v1/status').json()['sync']['rejected_down']})")
    assert hq_state(agent) == "offline"  # none of it was taken for HQ's word
    sold = post_sales(agent, 3)
    hq.start()
    wait_for(lambda: hq_state(agent) == "online", 30, "HQ back")
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)


@pytest.mark.parametrize("kind,protocol", [("mosquitto", "3.1.1"), ("nats", "3.1.1")],
                         ids=["mosquitto-mqtt-3.1.1", "nats-server-mqtt-3.1.1"])
def test_the_whole_up_and_down_path_on_mqtt_3_1_1_and_on_nats_server(
        agent_factory: Any, broker_factory: Any, hq_factory: Any, minter: CodeMinter, kind: str,
        protocol: str) -> None:
    broker: Broker = broker_factory(kind=kind).start()
    hq = hq_factory(broker, protocol).start()
    agent = agent_with_keys(agent_factory, broker, minter, protocol).start()
    sold = post_sales(agent, 20)
    wait_ack(hq, "members", push(hq, "members", [{"member_id": "M-2", "version": 1, "card_no": "8800002"}]))
    agent.stop()
    offline = push(hq, "stock", [{"sku": "SKU-N", "version": 1, "qty": 5}])  # queued in the session
    wait_for(lambda: hq.query("SELECT published_at FROM down_documents WHERE kind = 'stock'")[0][0], 20,
             "HQ published the stock document")
    agent.start()
    sold += post_sales(agent, 20)
    wait_ack(hq, "stock", offline)
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)
    assert get(agent, "/v1/members/lookup", code="8800002").json()["member_id"] == "M-2"
    assert get(agent, "/v1/inventory/SKU-N").json()["on_hand"] == 5


def records_doc(kind: str, version: int, records: list[dict[str, Any]], store: str | None = STORE,
                override: dict[str, Any] | None = None) -> bytes:
    body = json.loads(build_records(Records(f"raw-{kind}-{version}", TENANT, store, kind, version, tuple(records))))
    body.update(override or {})
    return json.dumps(body).encode()


GARBAGE_REASONS = {"not_json": 1, "bad_schema": 2, "wrong_store": 1, "wrong_tenant": 1, "too_large": 1}


def garbage(kind: str, store: str | None) -> list[bytes]:
    """One of each: not JSON, wrong schema, records of another kind, another store and tenant, too big."""
    other_kind = "stock" if kind != "stock" else "members"
    return [b"\x00not json{", records_doc(kind, 9, [], store, {"type": "batch"}),
            records_doc(kind, 9, [], store, {"kind": other_kind}),
            records_doc(kind, 9, [], store, {"store": "store-2"}),
            records_doc(kind, 9, [], store, {"tenant": "other"}),
            records_doc(kind, 9, [{"sku": "SKU-HUGE", "version": 1, "qty": 1, "pad": "x" * 1_100_000}], store)]


def test_garbage_on_every_down_topic_is_rejected_counted_and_answered_nothing_applied_and_sales_go_on(
        agent_factory: Any, broker_factory: Any, hq_factory: Any) -> None:
    broker: Broker = broker_factory().start()
    hq = hq_factory(broker).start()
    agent = agent_factory(mqtt_keys=sync_config(broker)).start()
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["state"] == "connected", 30, "connected")
    sold = post_sales(agent, 5)
    scopes: list[tuple[str | None, str]] = [(STORE, f"posedge/v1/{TENANT}/{STORE}/down"),
                                            (None, f"posedge/v1/{TENANT}/all/down")]
    for store, prefix in scopes:
        for kind in RECORD_KINDS:
            stock = [{"sku": f"SKU-OLD-{store}", "version": 1, "qty": 99}] if kind == "stock" else []
            publish_raw(broker, f"{prefix}/{kind}", [*garbage(kind, store), records_doc(kind, 5, [], store),
                                                     records_doc(kind, 4, stock, store)])  # v4 after v5: old
    publish_raw(broker, f"posedge/v1/{TENANT}/{STORE}/down/bogus", [b"{}"])
    sold += post_sales(agent, 5)

    topics = len(scopes) * len(RECORD_KINDS)
    expected = {reason: n * topics for reason, n in GARBAGE_REASONS.items()} | {"bad_topic": 1}
    wait_for(lambda: get(agent, "/v1/status").json()["sync"]["rejected_down"] == expected, 60,
             f"every piece of garbage counted ({get(agent, '/v1/status').json()['sync']['rejected_down']})")
    results = lambda: dict(hq.query("SELECT result, count(*) FROM down_acks GROUP BY result"))  # noqa: E731
    wait_for(lambda: results() == {"rejected": sum(GARBAGE_REASONS.values()) * topics, "applied": topics,
                                   "ignored": topics}, 60, f"HQ holds every answer ({results()})")
    reasons = dict(hq.query("SELECT reason, count(*) FROM down_acks WHERE result = 'rejected' GROUP BY reason"))
    assert reasons == {reason: n * topics for reason, n in GARBAGE_REASONS.items()}
    assert hq.query("SELECT count(*) FROM down_acks WHERE result = 'rejected' AND version IS NOT NULL") == [(0,)]
    for sku in (f"SKU-OLD-{STORE}", "SKU-OLD-None", "SKU-HUGE"):
        assert get(agent, f"/v1/inventory/{sku}").json()["known"] is False  # nothing of it applied
    wait_drained(agent)
    assert_exactly_once_in_order(hq, sold)
