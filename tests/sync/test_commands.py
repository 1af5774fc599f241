"""HQ's commands end to end with real parts: our own mosquitto, the real `posedge-hq serve`, `posedge-hq keygen`
and `posedge-hq command`, a real agent process. Each command is run and its answer recorded at HQ
(`command_acks`); a reload of an invalid file is refused with the agent still serving its old config; a rotated
token locks the old one out at once; the diagnostics bundle holds status and logs and no secret; replayed,
expired, badly signed, other stores' commands and garbage are refused and counted while the agent keeps syncing."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import AgentProcess, sale_body
from posedge.sync.command_doc import sign_command
from tests.sync.conftest import Broker, HqProcess, sync_config, wait_for
from tests.sync.test_config_push import hq, keygen, publish

TOPIC = "posedge/v1/test/store-1/down/command"
MQTT_PASSWORD = "pw-Hunter2-very-secret"


def status(agent: AgentProcess) -> dict[str, Any]:
    with agent.client() as client:
        return client.get("/v1/status").json()


def start_parts(broker_factory: Any, hq_factory: Any, agent_factory: Any, tmp_path: Path
                ) -> tuple[Broker, HqProcess, AgentProcess, Path, str]:
    broker = broker_factory().start()
    hq_process = hq_factory(broker).start()
    key, line = keygen(tmp_path / "keys", "cmd-1")
    home = tmp_path / "store"
    agent: AgentProcess = agent_factory(
        home=home, mqtt_keys=sync_config(broker, extra=f'username = "store-1"\npassword = "{MQTT_PASSWORD}"\n'),
        extra_config=f'[hq.config_keys]\n{line}\n\n[receipt]\nkey_path = "{home / "secret-claim-key.pem"}"\n')
    agent.start()
    wait_for(lambda: status(agent)["sync"]["state"] == "connected", 20, "the agent connected")
    return broker, hq_process, agent, key, line


def command(hq_process: HqProcess, key: Path, verb: str, *extra: str, store: str | None = "store-1") -> str:
    scope = ["--store", store] if store else []
    done = hq("command", verb, "--db", hq_process.db_url, "--tenant", "test", *scope, "--key", str(key),
              "--kid", "cmd-1", *extra)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["cmd_id"])


def acks(hq_process: HqProcess, cmd_id: str) -> list[dict[str, Any]]:
    return [{"result": r[0], "reason": r[1], "detail": r[2], "data": json.loads(r[3]) if r[3] else None}
            for r in hq_process.query("SELECT result, reason, detail, data FROM command_acks WHERE cmd_id = ?"
                                      " ORDER BY at", cmd_id)]


def first_ack(hq_process: HqProcess, cmd_id: str) -> dict[str, Any]:
    return wait_for(lambda: (acks(hq_process, cmd_id) or [None])[0], 20, f"the answer to {cmd_id}")


def test_each_command_end_to_end_with_its_answer_at_hq(broker_factory: Any, hq_factory: Any, agent_factory: Any,
                                                       tmp_path: Path) -> None:
    broker, hq_process, agent, key, line = start_parts(broker_factory, hq_factory, agent_factory, tmp_path)
    old_token = agent.token

    # diagnostics: status and logs in the bundle, no secret anywhere in it
    cmd_id = command(hq_process, key, "diagnostics", "--log-lines", "200")
    ack = first_ack(hq_process, cmd_id)
    assert ack["result"] == "ok" and ack["data"]["parts"] >= 1, ack
    wait_for(lambda: hq_process.query("SELECT count(*) FROM diagnostics_bundles WHERE cmd_id = ?", cmd_id)
             == [(ack["data"]["parts"],)], 20, "every part of the bundle at HQ")
    out = tmp_path / "bundle.json"
    shown = hq("command", "status", cmd_id, "--db", hq_process.db_url, "--bundle-out", str(out))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["acks"][0]["result"] == "ok"
    text = out.read_text(encoding="utf-8")
    bundle = json.loads(text)
    assert bundle["status"]["agent"]["store_id"] == "store-1" and bundle["status"]["sync"]["state"] == "connected"
    assert bundle["store"] == {"tenant": "test", "id": "store-1"}
    assert any("event=agent_started" in entry for entry in bundle["logs"]), bundle["logs"][-5:]
    assert bundle["config"]["mqtt"]["password"] == "<redacted>"
    assert bundle["config"]["receipt"]["key_path"] == "<redacted>"
    assert bundle["versions"]["down"]["store"]["config"] == 0
    for secret in (MQTT_PASSWORD, old_token, "secret-claim-key.pem", str(agent.home / "var" / "api-token")):
        assert secret not in text, secret
    raw_parts = hq_process.query("SELECT data FROM diagnostics_bundles WHERE cmd_id = ?", cmd_id)
    assert raw_parts and all(MQTT_PASSWORD not in str(row[0]) for row in raw_parts)

    # rotate_token: the old token is refused at once, the new one (read from disk) works; HQ gets a fingerprint
    cmd_id = command(hq_process, key, "rotate-token")
    ack = first_ack(hq_process, cmd_id)
    assert ack["result"] == "ok" and ack["data"]["rotated"] is True, ack
    new_token = agent.token
    assert new_token != old_token and len(ack["data"]["fingerprint"]) == 16
    assert (agent.home / "var" / "api-token").stat().st_mode & 0o777 == 0o600
    with httpx.Client(base_url=agent.url, timeout=10) as client:
        assert client.get("/v1/status", headers={"Authorization": f"Bearer {old_token}"}).status_code == 401
        assert client.get("/v1/status", headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
    everything_at_hq = json.dumps(hq_process.query("SELECT * FROM command_acks")) + json.dumps(
        hq_process.query("SELECT payload FROM down_documents"))
    assert new_token not in everything_at_hq and old_token not in everything_at_hq

    # reload: an invalid file is refused, the agent keeps serving its running config; a valid one applies
    original = agent.config.read_text(encoding="utf-8")
    agent.config.write_text(original + "\n[coupons]\nmax_per_sale = 99\n", encoding="utf-8")
    cmd_id = command(hq_process, key, "reload")
    ack = first_ack(hq_process, cmd_id)
    assert ack["result"] == "refused" and ack["reason"] == "invalid_config", ack
    assert "coupons.max_per_sale" in ack["detail"]
    after = status(agent)
    assert after["config"]["file_reload"]["result"] == "refused" and after["sync"]["state"] == "connected"
    assert agent.proc is not None and agent.proc.poll() is None
    agent.config.write_text(original + "\n[coupons]\nmax_per_sale = 3\n", encoding="utf-8")
    cmd_id = command(hq_process, key, "reload")
    ack = first_ack(hq_process, cmd_id)
    assert ack["result"] == "ok" and "coupons" in ack["detail"], ack
    assert status(agent)["config"]["file_reload"]["result"] == "applied"

    # resync: the store forgets its members version and asks again; HQ resends, the store applies it again
    members = tmp_path / "members.jsonl"
    members.write_text(json.dumps({"member_id": "m-1", "version": 1, "tier": "gold", "points": 10}) + "\n")
    pushed = hq("push", "members", str(members), "--db", hq_process.db_url, "--tenant", "test", "--store", "store-1")
    assert pushed.returncode == 0, pushed.stderr

    def applied_members() -> int:
        rows = hq_process.query("SELECT count(*) FROM down_acks WHERE kind = 'members' AND result = 'applied'")
        return int(rows[0][0]) if rows else 0

    wait_for(lambda: applied_members() == 1, 20, "the members document applied once")
    cmd_id = command(hq_process, key, "resync", "--kinds", "members")
    ack = first_ack(hq_process, cmd_id)
    assert ack["result"] == "ok" and ack["data"]["kinds"] == "members", ack
    wait_for(lambda: applied_members() == 2, 20, "the members document resent by HQ and applied again")

    assert status(agent)["commands"]["results"] == {"ok": 4, "refused": 1}
    assert agent.stop() == 0


def test_replayed_expired_forged_misdirected_and_garbage_commands_are_refused(
        broker_factory: Any, hq_factory: Any, agent_factory: Any, tmp_path: Path) -> None:
    broker, hq_process, agent, key, line = start_parts(broker_factory, hq_factory, agent_factory, tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), None)
    assert isinstance(private, Ed25519PrivateKey)

    # a tenant-wide command (all/down/command) reaches this store too
    wide = command(hq_process, key, "reload", store=None)
    assert first_ack(hq_process, wide)["result"] == "ok"

    # replay: the very same signed command a second time (a broker redelivering, someone replaying the wire)
    cmd_id = command(hq_process, key, "resync")
    assert first_ack(hq_process, cmd_id)["result"] == "ok"
    token = hq_process.query("SELECT payload FROM down_documents WHERE msg_id = ?", cmd_id)[0][0]
    publish(broker, TOPIC, str(token).encode())
    wait_for(lambda: len(acks(hq_process, cmd_id)) == 2, 20, "the replay answered")
    assert acks(hq_process, cmd_id)[1]["result"] == "refused" and acks(hq_process, cmd_id)[1]["reason"] == "replayed"

    now = int(time.time())
    cases = {  # cmd_id -> (the reason it is refused, the signed command)
        "c-expired": ("expired", sign_command(private, "cmd-1", cmd_id="c-expired", cmd="reload", tenant="test",
                                              store="store-1", iat=now - 120, ttl_s=60)),
        "c-forged": ("bad_signature", sign_command(Ed25519PrivateKey.generate(), "cmd-1", cmd_id="c-forged",
                                                   cmd="rotate_token", tenant="test", store="store-1")),
        "c-other": ("wrong_store", sign_command(private, "cmd-1", cmd_id="c-other", cmd="rotate_token",
                                                tenant="test", store="store-2")),
        "c-unknown": ("unknown_command", sign_command(private, "cmd-1", cmd_id="c-unknown", cmd="format_disk",
                                                      tenant="test", store="store-1")),
    }
    token_before = agent.token
    for _reason, signed in cases.values():
        publish(broker, TOPIC, signed.encode())
    for refused_id, (reason, _signed) in cases.items():
        found = first_ack(hq_process, refused_id)
        assert found["result"] == "refused" and found["reason"] == reason, (reason, found)
    assert agent.token == token_before  # neither the forged nor the other store's rotation ran

    for garbage in (b"\xff\xfe not ascii", b"not.a.jws", b"{}", b"A" * 70_000):
        publish(broker, TOPIC, garbage)
    wait_for(lambda: len(hq_process.query("SELECT 1 FROM command_acks WHERE cmd_id IS NULL AND reason = 'malformed'"))
             == 4, 20, "the garbage answered malformed")
    shown = status(agent)
    assert shown["commands"]["refused"] == {"replayed": 1, "expired": 1, "bad_signature": 1, "wrong_store": 1,
                                            "unknown_command": 1, "malformed": 4}
    assert shown["sync"]["rejected_down"]["malformed"] == 4

    # still syncing: a sale after all that reaches HQ
    with agent.client() as client:
        assert client.post("/v1/sales", json=sale_body("after-garbage")).status_code in (200, 201)
    wait_for(lambda: "after-garbage" in hq_process.sale_ids(), 20, "the sale at HQ")

    # the log of cmd_ids is durable: after a restart the same command is still refused
    assert agent.stop() == 0
    agent.start()
    wait_for(lambda: status(agent)["sync"]["state"] == "connected", 20, "the agent connected again")
    publish(broker, TOPIC, str(token).encode())
    wait_for(lambda: len(acks(hq_process, cmd_id)) == 3, 20, "the replay after the restart answered")
    assert acks(hq_process, cmd_id)[2]["reason"] == "replayed"
    assert agent.stop() == 0
