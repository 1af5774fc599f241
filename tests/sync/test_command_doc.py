"""The signed command (sync/command_doc.py) and its up messages (sync/down.py: command_ack, diagnostics): every
refusal of the format has its reason code, and untrusted bytes only ever give a typed value or a ProtocolError."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from posedge.sync.codes import ALG, Keyring, _segment, b64url_encode, sign_compact
from posedge.sync.command_doc import COMMAND_TYP, Command, peek_command, sign_command, verify_command
from posedge.sync.config_doc import CONFIG_TYP, DocumentRefused, sign_document, verify_document
from posedge.sync.down import (
    CommandAck,
    DiagnosticsPart,
    build_command_ack,
    build_diagnostics,
    parse_command_ack,
    parse_diagnostics,
)
from posedge.sync.protocol import ProtocolError
from tests.sync.test_config_doc import public

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
KEYRING = Keyring({"cfg-1": public(KEY)})
NOW = 1_800_000_000


def command(**overrides: Any) -> str:
    args: dict[str, Any] = {"cmd_id": "c-1", "cmd": "resync", "tenant": "t", "store": "s1",
                            "args": {"kinds": ["stock", "members"]}, "iat": NOW - 10, "ttl_s": 600}
    args.update(overrides)
    return sign_command(KEY, "cfg-1", **args)


def reason_of(token: Any, store: str | None = "s1", tenant: str = "t", now: float = NOW) -> str:
    with pytest.raises(DocumentRefused) as refused:
        verify_command(token, KEYRING, tenant, store, now)
    return refused.value.reason


def raw(payload: dict[str, Any], typ: str = COMMAND_TYP, key: Ed25519PrivateKey = KEY) -> str:
    return sign_compact(key, {"alg": ALG, "kid": "cfg-1", "typ": typ}, payload)


def test_a_signed_command_verifies_with_its_fields_and_defaults() -> None:
    got = verify_command(command(), KEYRING, "t", "s1", NOW)
    assert got == Command(got.token, "cfg-1", "c-1", "resync", NOW - 10, NOW + 590, "t", "s1",
                          {"kinds": ["members", "stock"]})
    assert verify_command(command(cmd="resync", args={}), KEYRING, "t", "s1", NOW).args == {
        "kinds": ["members", "stock"]}
    assert verify_command(command(cmd="diagnostics", args={}), KEYRING, "t", "s1", NOW).args == {"log_lines": 500}
    assert verify_command(command(cmd="rotate_token", args={}), KEYRING, "t", "s1", NOW).args == {}
    wide = verify_command(command(store=None, cmd="reload", args={}), KEYRING, "t", None, NOW)
    assert wide.scope == "tenant"
    # HQ resending a tenant-wide command to one store comes on the store's own topic
    assert verify_command(command(store=None, cmd="reload", args={}), KEYRING, "t", "s1", NOW).store is None
    payload = json.loads(__import__("base64").urlsafe_b64decode(command().split(".")[1] + "=="))
    assert set(payload) == {"cmd_id", "cmd", "iat", "exp", "tenant", "store", "args"}


def test_every_refusal_has_its_reason() -> None:
    token = command()
    head, body, sig = token.split(".")
    assert reason_of("not a jws") == "malformed"
    assert reason_of(f"{head}.{body}.{b64url_encode(OTHER.sign(b'x'))}") == "bad_signature"
    assert reason_of(sign_command(OTHER, "cfg-1", cmd_id="c", cmd="reload", tenant="t", store="s1")) == "bad_signature"
    assert reason_of(sign_command(KEY, "cfg-9", cmd_id="c", cmd="reload", tenant="t", store="s1")) == "unknown_kid"
    bad_alg = _segment({"alg": "HS256", "kid": "cfg-1", "typ": COMMAND_TYP})
    assert reason_of(f"{bad_alg}.{body}.{sig}") == "bad_alg"
    assert reason_of(command(), store="s2") == "wrong_store"
    assert reason_of(command(), store=None) == "wrong_store"  # a store's command on the tenant-wide topic
    assert reason_of(command(), tenant="u") == "wrong_tenant"
    assert reason_of(command(), now=NOW + 600) == "expired"
    assert reason_of(command(cmd="format_disk", args={})) == "unknown_command"
    assert reason_of(command(args={"kinds": ["cats"]})) == "malformed"
    assert reason_of(command(cmd="reload", args={"force": True})) == "malformed"
    assert reason_of(command(cmd="diagnostics", args={"log_lines": 10**9})) == "malformed"
    assert reason_of(command(cmd_id="has space")) == "malformed"
    assert reason_of(command(ttl_s=0)) == "malformed"
    assert reason_of(command(ttl_s=40 * 86400)) == "malformed"
    payload = {"cmd_id": "c", "cmd": "reload", "iat": NOW, "exp": NOW + 60, "tenant": "t", "args": {}}
    assert reason_of(raw({**payload, "extra": 1}), store=None) == "malformed"
    assert reason_of(raw(payload, typ=CONFIG_TYP), store=None) == "malformed"  # a config is never a command
    # ... and a command is never a config
    with pytest.raises(DocumentRefused) as refused:
        verify_document(raw(payload), KEYRING, "t", None)
    assert refused.value.reason == "malformed"
    config = sign_document(KEY, "cfg-1", ver=1, tenant="t", body={})
    assert reason_of(config, store=None) == "malformed"


def test_peek_reads_a_refused_commands_claims_without_trusting_them() -> None:
    assert peek_command(command(cmd="reload", args={})) == ("c-1", "reload")
    assert peek_command(command(cmd="nope", args={})) == ("c-1", None)
    assert peek_command("garbage") == (None, None)


def test_command_ack_and_diagnostics_round_trip() -> None:
    ack = CommandAck("m1", "t", "s1", "c-1", "rotate_token", "ok", None, "rotated", {"fingerprint": "ab" * 8,
                                                                                     "rotated": True})
    assert parse_command_ack(build_command_ack(ack), "t", "s1") == ack
    broken = CommandAck("m2", "t", "s1", None, None, "refused", "malformed", "not a JWS")
    assert parse_command_ack(build_command_ack(broken), "t", "s1") == broken
    part = DiagnosticsPart("m3", "t", "s1", "c-1", "b-1", 0, 2, "0" * 64, "H4sIAAAA")
    assert parse_diagnostics(build_diagnostics(part), "t", "s1") == part
    for bad, reason in ((orjson.dumps({"v": 1, "type": "command_ack", "msg_id": "m", "tenant": "t", "store": "s1",
                                       "result": "maybe"}), "bad_field"),
                        (build_command_ack(ack), "wrong_store")):
        with pytest.raises(ProtocolError) as caught:
            parse_command_ack(bad, "t", "s2" if reason == "wrong_store" else "s1")
        assert caught.value.reason == reason
    wrong = build_diagnostics(DiagnosticsPart("m", "t", "s1", "c", "b", 3, 2, "0" * 64, "AAAA"))
    with pytest.raises(ProtocolError) as caught:
        parse_diagnostics(wrong, "t", "s1")
    assert caught.value.reason == "bad_field"
    not_b64 = build_diagnostics(DiagnosticsPart("m", "t", "s1", "c", "b", 0, 1, "0" * 64, "<script>"))
    with pytest.raises(ProtocolError):
        parse_diagnostics(not_b64, "t", "s1")


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.dictionaries(st.sampled_from(
    ["type", "msg_id", "cmd_id", "cmd", "result", "reason", "detail", "data", "bundle_id", "part", "parts",
     "encoding", "sha256", "x"]), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_size=10).map(lambda d: orjson.dumps({"v": 1, "tenant": "t", "store": "s1", **d}))))
def test_any_bytes_give_a_value_or_a_protocol_error(data: bytes) -> None:
    for parse in (parse_command_ack, parse_diagnostics):
        try:
            parse(data, "t", "s1")
        except ProtocolError as exc:
            assert exc.reason


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400) | st.binary(max_size=400))
def test_any_token_gives_a_command_or_a_refusal(token: Any) -> None:
    try:
        verify_command(token, KEYRING, "t", "s1", time.time())
    except DocumentRefused as exc:
        assert exc.reason


@pytest.mark.parametrize("hq_db", ["sqlite", "postgresql"], indirect=True)
def test_hq_issues_records_answers_and_reassembles_bundles_on_both_databases(hq_db: str | None,
                                                                            tmp_path: Any) -> None:
    """hq/commands.py on SQLite and on this machine's PostgreSQL: issue (the down log), the answers, a bundle
    in parts reassembled and checked, the resend of what a connecting store has not answered."""
    import base64
    import gzip
    import hashlib
    from collections import Counter

    from posedge.hq import commands, db, keys

    database = db.open_database(hq_db or f"sqlite:///{tmp_path / 'hq.db'}")
    try:
        key_path, _minter = keys.write_key(tmp_path / "keys", "cmd-1")
        cmd_id, version = commands.issue(database, key_path, "cmd-1", "t", "s1", "diagnostics", {"log_lines": 5})
        other, version2 = commands.issue(database, key_path, "cmd-1", "t", None, "reload")
        assert (version, version2) == (1, 1)  # one sequence per (tenant, scope)
        with pytest.raises(commands.CommandError):
            commands.issue(database, key_path, "cmd-1", "t", "s1", "resync", {"kinds": ["cats"]})
        published: list[tuple[str, bytes]] = []
        consumer = commands.CommandConsumer(database, lambda topic, payload: published.append((topic, payload)),
                                            Counter())
        database.execute("UPDATE down_documents SET published_at = created_at")
        assert consumer.on_connect("t", "s1") == 2  # neither answered yet: both again, to the store's own topic
        assert {topic for topic, _ in published} == {"posedge/v1/t/s1/down/command"}

        packed = gzip.compress(json.dumps({"status": {"ok": True}, "logs": ["a"] * 50}).encode())
        text = base64.b64encode(packed).decode()
        digest = hashlib.sha256(packed).hexdigest()
        halves = [text[: len(text) // 2], text[len(text) // 2:]]
        for number, data in enumerate(reversed(halves)):  # parts may arrive in any order
            part = DiagnosticsPart(f"p{number}", "t", "s1", cmd_id, "b-1", 1 - number, 2, digest, data)
            consumer.on_diagnostics("t", "s1", build_diagnostics(part))
            consumer.on_diagnostics("t", "s1", build_diagnostics(part))  # a duplicate delivery changes nothing
        ack = CommandAck("a1", "t", "s1", cmd_id, "diagnostics", "ok", None, "sent", {"bundle_id": "b-1", "parts": 2})
        consumer.on_command_ack("t", "s1", build_command_ack(ack))
        consumer.on_command_ack("t", "s1", build_command_ack(ack))
        shown = commands.command_status(database, cmd_id)
        assert shown is not None and shown["cmd"] == "diagnostics" and shown["args"] == {"log_lines": 5}
        assert [a["result"] for a in shown["acks"]] == ["ok"] and shown["acks"][0]["data"]["parts"] == 2
        assert shown["bundles"] == [{"store": "s1", "bundle_id": "b-1", "parts": 2, "received": 2, "complete": True}]
        assert commands.read_bundle(database, "t", "b-1") == {"status": {"ok": True}, "logs": ["a"] * 50}
        published.clear()
        assert consumer.on_connect("t", "s1") == 1  # the answered one is not sent again
        assert peek_command(published[0][1].decode()) == (other, "reload")
        assert commands.command_status(database, "nope") is None
    finally:
        database.close()
