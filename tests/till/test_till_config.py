"""The till's config tables: keys validated, secrets from env or file, errors name the key."""

from __future__ import annotations

import pytest

from posedge.agent.config import ConfigError, validate_config
from posedge.agent.till.codes import CodeMinter


def problems(raw) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        validate_config(raw)
    return [str(issue) for issue in caught.value.issues]


def test_hq_public_keys_must_be_32_byte_ed25519_keys():
    good = CodeMinter.generate("k1").public_key_b64
    assert validate_config({"hq": {"public_keys": {"k1": good}}}).hq.public_keys == {"k1": good}
    assert "32 bytes, found 3" in problems({"hq": {"public_keys": {"k1": "AAAA"}}})[0]
    assert "kid 'bad kid'" in problems({"hq": {"public_keys": {"bad kid": good}}})[0]
    assert "hq.clock_skew_s" in problems({"hq": {"clock_skew_s": 3600}})[0]


def test_phone_hash_key_from_env_or_file(tmp_path, monkeypatch):
    secret = tmp_path / "phone-key"
    secret.write_text("from-file\n")
    config = validate_config({"members": {"phone_hash_key_file": str(secret)}})
    assert config.members.phone_hash_key.get_secret_value() == "from-file"
    monkeypatch.setenv("POSEDGE_MEMBERS_PHONE_HASH_KEY", "from-env")
    members = validate_config({"members": {"phone_hash_key_file": str(secret)}}).members
    assert members.phone_hash_key.get_secret_value() == "from-env"
    assert "from-env" not in repr(validate_config({}).members)


def test_offline_policy_and_stacking_values_are_checked():
    assert "coupons.offline.beyond" in problems({"coupons": {"offline": {"beyond": "maybe"}}})[0]
    assert "coupons.return_on_refund" in problems({"coupons": {"return_on_refund": "sometimes"}})[0]
    assert "did you mean 'max_per_sale'" in problems({"coupons": {"max_per_sal": 2}})[0]
