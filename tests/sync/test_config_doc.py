"""The signed config document (sync/config_doc.py) and the merge / not-pushable rules (agent/reconfig/rules.py):
every refusal of the format gets its reason code; the layers merge as docs/operations.md says."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from posedge.agent.config import validate_config
from posedge.agent.reconfig.rules import merged, unpushable
from posedge.sync.codes import Keyring, _segment, b64url_decode, b64url_encode
from posedge.sync.config_doc import CONFIG_TYP, DocumentRefused, peek_version, sign_document, verify_document

KEY = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()


def public(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization
    return b64url_encode(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


KEYRING = Keyring({"cfg-1": public(KEY)})


def doc(**overrides: Any) -> str:
    args: dict[str, Any] = {"ver": 3, "tenant": "t", "store": "s1", "body": {"coupons": {"max_per_sale": 2}}}
    args.update(overrides)
    return sign_document(KEY, "cfg-1", **args)


def reason_of(token: Any, store: str | None = "s1", tenant: str = "t") -> str:
    with pytest.raises(DocumentRefused) as refused:
        verify_document(token, KEYRING, tenant, store)
    return refused.value.reason


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey = KEY) -> str:
    signing_input = f"{_segment(header)}.{_segment(payload)}"
    return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"


def test_a_signed_document_verifies_with_its_fields() -> None:
    verified = verify_document(doc(), KEYRING, "t", "s1")
    assert (verified.ver, verified.tenant, verified.store, verified.kid, verified.scope) == (3, "t", "s1", "cfg-1",
                                                                                             "store")
    assert verified.body == {"coupons": {"max_per_sale": 2}}
    tenant_wide = verify_document(doc(store=None), KEYRING, "t", None)
    assert tenant_wide.scope == "tenant" and tenant_wide.store is None


def test_every_refusal_of_the_format_has_its_reason() -> None:
    good = doc()
    head, payload, sig = good.split(".")
    assert reason_of("not a jws") == "malformed"
    assert reason_of(b"bytes") == "malformed"
    # one bit of the signature flipped (replacing its last characters is no change when it already ends in them)
    flipped = bytearray(b64url_decode(sig))
    flipped[0] ^= 1
    assert reason_of(f"{head}.{payload}.{b64url_encode(bytes(flipped))}") == "bad_signature"
    assert reason_of(sign_document(OTHER, "cfg-1", ver=1, tenant="t", store="s1", body={})) == "bad_signature"
    assert reason_of(sign_document(KEY, "cfg-9", ver=1, tenant="t", store="s1", body={})) == "unknown_kid"
    assert reason_of(hand_signed({"alg": "EdDSA", "typ": CONFIG_TYP}, {"ver": 1})) == "unknown_kid"  # no kid
    assert reason_of(hand_signed({"alg": "HS256", "kid": "cfg-1", "typ": CONFIG_TYP}, {"ver": 1})) == "bad_alg"
    assert reason_of(hand_signed({"alg": "none", "kid": "cfg-1"}, {"ver": 1})) == "bad_alg"
    # a document signed for another purpose (a command, a code) is never taken for config
    assert reason_of(doc(typ="posedge-command+jws")) == "malformed"
    base = {"ver": 1, "iat": 1, "tenant": "t", "store": "s1", "config": {}}
    for broken in ({**base, "ver": 0}, {**base, "ver": "1"}, {**base, "ver": True}, {**base, "iat": None},
                   {**base, "config": []}, {**base, "tenant": "a/b"}, {**base, "extra": 1}):
        assert reason_of(hand_signed({"alg": "EdDSA", "kid": "cfg-1", "typ": CONFIG_TYP}, broken)) == "malformed"
    assert reason_of(doc(tenant="other")) == "wrong_tenant"
    assert reason_of(doc(store="s2")) == "wrong_store"
    assert reason_of(doc(store=None), store="s1") == "wrong_store"  # a tenant-wide document on a store's topic
    assert reason_of(doc(), store=None) == "wrong_store"  # a store's document on the tenant-wide topic
    assert reason_of("e" * 70_000) == "malformed"


def test_peek_version_reads_a_refused_documents_claim_without_trusting_it() -> None:
    assert peek_version(doc(ver=17)) == 17
    assert peek_version("garbage") is None


def test_layers_merge_key_by_key_and_arrays_replace_whole() -> None:
    file = {"coupons": {"max_per_sale": 1, "offline": {"accept": True, "max_value_fen": 5000}},
            "printers": [{"type": "file", "name": "a", "path": "/tmp/a"}], "receipt": {"footer": ["file"]}}
    tenant = {"coupons": {"offline": {"max_value_fen": 3000}}, "receipt": {"footer": ["tenant"]}}
    store = {"printers": [{"type": "file", "name": "b", "path": "/tmp/b"}], "receipt": {"footer": ["store"]}}
    out = merged(file, [tenant, store])
    assert out["coupons"] == {"max_per_sale": 1, "offline": {"accept": True, "max_value_fen": 3000}}
    assert out["printers"] == [{"type": "file", "name": "b", "path": "/tmp/b"}]
    assert out["receipt"] == {"footer": ["store"]}
    assert file["coupons"]["offline"]["max_value_fen"] == 5000  # inputs untouched
    config = validate_config(out)
    assert config.coupons.offline.max_value_fen == 3000 and config.printer_configs()[0].name == "b"


def test_identity_storage_api_broker_config_keys_and_secrets_cannot_be_pushed() -> None:
    body = {"store": {"id": "x"}, "storage": {"path": "/x"}, "api": {"listen": "0.0.0.0:1"}, "events": {},
            "mqtt": {"url": "mqtt://evil:1883"}, "hq": {"config_keys": {}, "clock_skew_s": 30},
            "members": {"phone_hash_key": "k", "code_max_age_s": 60},
            "receipt": {"key_path": "/k.pem", "footer": ["ok"]},
            "printers": [{"type": "network", "host": "1.2.3.4", "password_file": "/p"}]}
    keys = {issue.key: issue.problem for issue in unpushable(body, "pushed store config v1")}
    assert set(keys) == {"store", "storage", "api", "events", "mqtt", "hq.config_keys", "members.phone_hash_key",
                         "receipt.key_path", "printers[0].password_file"}
    assert all(problem.startswith("cannot be pushed") for problem in keys.values())
    assert unpushable({"coupons": {"max_per_sale": 2}, "hq": {"public_keys": {}}}, "x") == []


def test_the_payload_is_compact_json_with_the_documented_fields() -> None:
    payload = json.loads(__import__("base64").urlsafe_b64decode(doc(iat=5).split(".")[1] + "=="))
    assert payload == {"ver": 3, "iat": 5, "tenant": "t", "store": "s1", "config": {"coupons": {"max_per_sale": 2}}}
