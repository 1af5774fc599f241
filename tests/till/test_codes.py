"""Signed codes: each refusal has its own reason; forgeries never verify."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from posedge.agent.till.codes import (
    REFUSALS,
    CodeMinter,
    CodeRefused,
    CodeVerifier,
    Keyring,
    MemberCode,
    PickupCode,
    b64url_decode,
    b64url_encode,
    looks_like_code,
)

from .conftest import NOW, STORE


def reason(verifier: CodeVerifier, token, **kw) -> str:
    with pytest.raises(CodeRefused) as caught:
        verifier.verify(token, **kw)
    return caught.value.code


def segments(token: str) -> list[str]:
    return token.split(".")


def rejoin(header: dict, payload_segment: str, signature: str) -> str:
    head = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    return f"{head}.{payload_segment}.{signature}"


# -- valid codes ---------------------------------------------------------------------------------

def test_member_code_verifies_to_its_claims(hq, verifier):
    code = verifier.verify(hq.member("M1001", "gold"), kind="member")
    assert code == MemberCode(sub="M1001", tier="gold", exp=NOW + 300, iat=NOW)


def test_coupon_code_verifies_with_every_benefit(hq, verifier):
    off = verifier.verify(hq.coupon("C1", "spring", off=500, min=2000, st=[STORE]), kind="coupon")
    pct = verifier.verify(hq.coupon("C2", "spring", pct=20, cap=3000))
    gift = verifier.verify(hq.coupon("C3", "spring", gift="SKU-CUP", sub="M1"))
    assert (off.off, off.min, off.st, off.benefit) == (500, 2000, (STORE,), "off")
    assert (pct.pct, pct.cap, pct.st, pct.benefit) == (20, 3000, None, "pct")
    assert (gift.gift, gift.sub, gift.benefit) == ("SKU-CUP", "M1", "gift")


def test_pickup_code_verifies(hq, verifier):
    assert verifier.verify(hq.pickup("O-77", STORE), kind="pickup") == PickupCode("O-77", STORE, NOW + 86400 * 7)


def test_rotation_accepts_every_listed_key(clock):
    old, new = CodeMinter.generate("k-old", clock), CodeMinter.generate("k-new", clock)
    verifier = CodeVerifier(Keyring({old.kid: old.public_key_b64, new.kid: new.public_key_b64}), STORE, clock=clock)
    assert verifier.verify(old.member("M1")).sub == verifier.verify(new.member("M1")).sub == "M1"


def test_skew_tolerates_a_slightly_early_or_late_clock(hq, verifier, clock):
    token = hq.coupon("C1", nbf=NOW + 20, ttl_s=100)
    assert verifier.verify(token).jti == "C1"  # nbf 20 s ahead, skew 30 s
    clock.now = NOW + 125  # 25 s past exp
    assert verifier.verify(token).jti == "C1"


# -- one test per refusal reason -------------------------------------------------------------------

def test_bad_signature(hq, verifier):
    head, payload, sig = segments(hq.member("M1"))
    raw = bytearray(b64url_decode(sig))
    raw[10] ^= 0x01
    assert reason(verifier, f"{head}.{payload}.{b64url_encode(bytes(raw))}") == "bad_signature"


def test_unknown_kid(clock, verifier):
    stranger = CodeMinter.generate("hq-other", clock)
    assert reason(verifier, stranger.member("M1")) == "unknown_kid"


def test_retired_kid_even_while_its_key_is_still_listed(hq, clock):
    verifier = CodeVerifier(Keyring({hq.kid: hq.public_key_b64}, retired_kids=[hq.kid]), STORE, clock=clock)
    assert reason(verifier, hq.member("M1")) == "retired_kid"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES256", "eddsa", None, 1])
def test_bad_alg_including_none(hq, verifier, alg):
    token = hq.sign({"k": "m", "sub": "M1", "tier": "basic", "exp": NOW + 60}, header={"alg": alg, "kid": hq.kid})
    assert reason(verifier, token) == "bad_alg"


def test_alg_none_with_empty_signature(hq, verifier):
    head, payload, _ = segments(hq.member("M1"))
    none_head = {"alg": "none", "kid": hq.kid}
    assert reason(verifier, rejoin(none_head, payload, "")) == "bad_alg"


def test_expired(hq, verifier, clock):
    token = hq.coupon("C1", ttl_s=60)
    clock.now = NOW + 60 + 30
    assert reason(verifier, token) == "expired"


def test_member_code_older_than_the_store_accepts_is_expired(hq, verifier, clock):
    token = hq.member("M1", ttl_s=3600)  # HQ gave it an hour; the store takes 5 minutes
    clock.now = NOW + 300 + 31
    assert reason(verifier, token) == "expired"


def test_not_yet_valid(hq, verifier):
    assert reason(verifier, hq.coupon("C1", nbf=NOW + 31)) == "not_yet_valid"


def test_wrong_store_for_coupon_and_pickup(hq, verifier):
    assert reason(verifier, hq.coupon("C1", st=["store-002", "store-003"])) == "wrong_store"
    assert reason(verifier, hq.pickup("O1", "store-002")) == "wrong_store"


def test_wrong_kind(hq, verifier):
    assert reason(verifier, hq.member("M1"), kind="coupon") == "wrong_kind"
    assert reason(verifier, hq.coupon("C1"), kind="pickup") == "wrong_kind"


def test_wrong_member(hq, verifier):
    token = hq.coupon("C1", sub="M1")
    assert verifier.verify(token, member_id="M1").sub == "M1"
    assert reason(verifier, token, member_id="M2") == "wrong_member"


@pytest.mark.parametrize("token", [
    "", "hello", "a.b", "a.b.c.d", "eyJ.eyJ.", "!!!.???.***", "x" * 3000, None, 12, b"bytes",
])
def test_malformed_framing(verifier, token):
    assert reason(verifier, token) == "malformed"


@pytest.mark.parametrize("claims", [
    {"k": "x", "exp": NOW + 60},
    {"k": "m", "sub": "M1", "tier": "basic"},  # no exp
    {"k": "m", "sub": "M1", "tier": "basic", "exp": "tomorrow"},
    {"k": "m", "sub": "M1", "tier": "basic", "exp": True},
    {"k": "m", "sub": "", "tier": "basic", "exp": NOW + 60},
    {"k": "c", "jti": "C1", "cmp": "x", "exp": NOW + 60},  # no benefit
    {"k": "c", "jti": "C1", "cmp": "x", "off": 100, "pct": 10, "exp": NOW + 60},  # two benefits
    {"k": "c", "jti": "C1", "cmp": "x", "pct": 101, "exp": NOW + 60},
    {"k": "c", "jti": "C1", "cmp": "x", "off": 1.5, "exp": NOW + 60},
    {"k": "c", "jti": "C1", "cmp": "x", "off": 100, "cap": 50, "exp": NOW + 60},
    {"k": "c", "jti": "C1", "cmp": "x", "off": 100, "st": "store-001", "exp": NOW + 60},
    {"k": "c", "jti": "C1", "cmp": "x", "off": 100, "min": -1, "exp": NOW + 60},
    {"k": "p", "oid": "O1", "exp": NOW + 60},  # no store
])
def test_malformed_claims_signed_by_hq(hq, verifier, claims):
    assert reason(verifier, hq.sign(claims)) == "malformed"


def test_payload_that_is_not_json_but_signed(hq, verifier):
    head = b64url_encode(b'{"alg":"EdDSA","kid":"hq-2026a"}')
    body = b64url_encode(b"not json")
    sig = b64url_encode(hq.private_key.sign(f"{head}.{body}".encode()))
    assert reason(verifier, f"{head}.{body}.{sig}") == "malformed"


def test_critical_header_extensions_are_refused(hq, verifier):
    token = hq.sign({"k": "m", "sub": "M1", "tier": "b", "exp": NOW + 60},
                    header={"alg": "EdDSA", "kid": hq.kid, "crit": ["b64"], "b64": False})
    assert reason(verifier, token) == "malformed"


def test_every_reason_code_named_by_the_issue_exists():
    assert set(REFUSALS) == {"bad_signature", "unknown_kid", "retired_kid", "bad_alg", "expired", "not_yet_valid",
                             "wrong_store", "wrong_kind", "wrong_member", "revoked", "already_redeemed", "malformed"}


# -- forgeries -------------------------------------------------------------------------------------

def test_swapped_payloads_between_tokens_do_not_verify(hq, verifier):
    small = segments(hq.coupon("C1", off=100))
    large = segments(hq.coupon("C2", off=100000))
    assert reason(verifier, f"{small[0]}.{large[1]}.{small[2]}") == "bad_signature"


def test_kid_changed_to_another_trusted_key_does_not_verify(hq, clock):
    other = CodeMinter.generate("hq-2026b", clock)
    verifier = CodeVerifier(Keyring({hq.kid: hq.public_key_b64, other.kid: other.public_key_b64}), STORE, clock=clock)
    _, payload, sig = segments(hq.member("M1"))
    assert reason(verifier, rejoin({"alg": "EdDSA", "kid": other.kid}, payload, sig)) == "bad_signature"


def test_payload_edited_to_a_bigger_discount_does_not_verify(hq, verifier):
    head, payload, sig = segments(hq.coupon("C1", off=100))
    claims = json.loads(b64url_decode(payload))
    claims["off"] = 99999
    forged = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    assert reason(verifier, f"{head}.{forged}.{sig}") == "bad_signature"


def test_padding_and_standard_base64_are_not_accepted(hq, verifier):
    head, payload, sig = segments(hq.member("M1"))
    padded = base64.b64encode(b64url_decode(sig)).decode()  # may contain + / =
    assert reason(verifier, f"{head}.{payload}.{padded}=") in {"bad_signature", "malformed"}


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(hq, verifier, position, bit):
    """GIVEN a valid coupon WHEN any one bit of the scanned text flips THEN it is refused (canonical base64url)."""
    token = hq.coupon("C1", off=500, st=[STORE])
    raw = bytearray(token.encode())
    index = position % len(raw)
    raw[index] ^= 1 << bit
    try:
        forged = raw.decode()
    except UnicodeDecodeError:
        return  # not text: a scanner could not even deliver it
    if forged == token:
        return
    with pytest.raises(CodeRefused):
        verifier.verify(forged)


@FUZZ
@given(text=st.text(max_size=300))
def test_arbitrary_scans_never_crash_the_verifier(verifier, text):
    with pytest.raises(CodeRefused):
        verifier.verify(text)


def test_looks_like_code(hq):
    assert looks_like_code(hq.member("M1"))
    assert not looks_like_code("6901234567890")
    assert not looks_like_code("134567890123456789")  # a payment code


# -- the documented format is the format -------------------------------------------------------------

DOC = __import__("pathlib").Path(__file__).parents[2] / "docs" / "codes.md"


def test_the_worked_example_in_docs_verifies_and_pyjwt_agrees():
    import jwt
    text = DOC.read_text(encoding="utf-8")
    token = text.split("<!-- example-coupon -->\n```\n", 1)[1].split("\n", 1)[0]
    minter = CodeMinter.from_seed("hq-2026a", "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
    assert minter.public_key_b64 == "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    claims = {"k": "c", "jti": "C-7Q2M9", "cmp": "spring26", "off": 500, "min": 3000, "st": ["store-001"],
              "nbf": 1790000000, "exp": 1792592000}
    assert minter.sign(claims) == token  # Ed25519 is deterministic: the doc's bytes are reproducible
    verifier = CodeVerifier(Keyring({"hq-2026a": minter.public_key_b64}), "store-001", clock=lambda: 1790000100)
    assert verifier.verify(token).off == 500
    assert jwt.decode(token, minter.private_key.public_key(), algorithms=["EdDSA"],
                      options={"verify_exp": False, "verify_nbf": False}) == claims


def test_codes_minted_by_pyjwt_as_documented_verify(hq, verifier):
    import jwt
    token = jwt.encode({"k": "m", "sub": "M1001", "tier": "gold", "iat": NOW, "exp": NOW + 300}, hq.private_key,
                       algorithm="EdDSA", headers={"kid": hq.kid})
    assert verifier.verify(token, kind="member").sub == "M1001"


# -- the shared format (sync/codes.py) and the agent's errors ------------------------------------------

def test_the_agent_refuses_with_its_errors_what_the_shared_format_refuses_in_the_same_words(hq, clock):
    from posedge.agent.errors import AgentError
    from posedge.sync import codes as wire

    keyring = Keyring({hq.kid: hq.public_key_b64})
    token = hq.coupon("C1", off=100, st=["store-9"])
    with pytest.raises(wire.CodeRefused) as shared:
        wire.CodeVerifier(keyring, STORE, clock=clock).verify(token, kind="member")
    with pytest.raises(CodeRefused) as agent:
        CodeVerifier(keyring, STORE, clock=clock).verify(token, kind="member")
    assert not isinstance(shared.value, AgentError) and isinstance(agent.value, AgentError)
    assert (agent.value.status, agent.value.body()) == (422, {"code": "wrong_kind", "message": shared.value.message,
                                                             "expected": "member", "found": "coupon"})
    assert set(REFUSALS) == set(wire.REFUSALS)
