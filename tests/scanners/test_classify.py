"""Classification: strict recognisers, GTIN check digits against an independent computation."""

from __future__ import annotations

import base64
import json
import os
import re

import pytest
from hypothesis import given, settings, strategies as st

from posedge.agent.scans import gs1
from posedge.agent.scans.pipeline import Classifier, NamedPattern, mask_payment_code

EXAMPLES = 2000 if os.environ.get("POSEDGE_SLOW") == "1" else 300
classify = Classifier().classify


def independent_check_digit(body: str) -> str:
    """GS1 General Specifications 7.9.1, written the long way: pad to 17 digits, weights 3,1,3,1..."""
    padded = body.rjust(17, "0")
    weights = [3 if i % 2 == 0 else 1 for i in range(17)]
    total = sum(int(d) * w for d, w in zip(padded, weights))
    return str((10 - total % 10) % 10) if total % 10 else "0"


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([8, 12, 13, 14]), st.data())
def test_gtin_check_digit_matches_an_independent_computation(length: int, data: st.DataObject) -> None:
    body = data.draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    good = body + independent_check_digit(body)
    result = classify(good)
    if result.kind == "payment_code":
        return  # never: lengths differ; kept so a future pattern change shows up here
    assert result.kind == "gtin", good
    assert result.details["gtin"] == good.zfill(14)
    for wrong in "0123456789":
        if wrong != good[-1]:
            assert classify(body + wrong).kind == "unknown"


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.text(max_size=80))
def test_classifier_never_crashes_on_any_text(text: str) -> None:
    result = classify(text)
    assert result.kind in ("gtin", "gs1", "payment_code", "member", "coupon", "pickup", "unknown")


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=200))
def test_gs1_parser_never_crashes(data: bytes) -> None:
    text = data.decode("latin-1")
    for candidate in (text, "\x1d" + text, "(" + text):
        try:
            gs1.parse(candidate)
        except gs1.NotGs1:
            pass


def test_gtin_lengths_and_restricted_prefixes() -> None:
    assert classify("96385074").details["format"] == "gtin-8"
    assert classify("036000291452").details["format"] == "gtin-12"
    assert classify("6901234567892").details == {"gtin": "06901234567892", "format": "gtin-13"}
    assert classify("2012345000018").details.get("restricted") is True  # in-store weighed item
    assert classify("6901234567893").kind == "unknown"
    assert classify("690123456789２").kind == "unknown"  # a full-width digit is not a digit here


def test_gs1_element_strings_from_scanner_camera_and_keyboard() -> None:
    expected = {"gtin": "09501101530003", "batch": "AB-12", "expiry": "2026-05-31"}
    for text, symbology in [("0109501101530003172605311" + "0AB-12", "]C1"),
                            ("\x1d010950110153000317260531" + "10AB-12", None),
                            ("(01)09501101530003(17)260531(10)AB-12", None),
                            ("010950110153000317260531" + "10AB-12", "]d2")]:
        result = classify(text, symbology)
        assert result.kind == "gs1", (text, result)
        assert {k: result.details[k] for k in expected} == expected


def test_gs1_variable_fields_end_at_group_separator_and_weights_have_decimals() -> None:
    result = classify("0109501101530003" + "10LOT7\x1d" + "3103001250" + "21SN1", "]C1")
    assert result.kind == "gs1"
    elements = result.details["elements"]
    assert [e["ai"] for e in elements] == ["01", "10", "3103", "21"]
    assert elements[2]["decimal"] == "1.250"
    assert result.details["serial"] == "SN1"


@pytest.mark.parametrize("text", [
    "0109501101530004172605311",        # bad GTIN check digit
    "01095011015300031799133110AB",     # month 13
    "0109501101530003\x1d\x1d",         # empty field
    "(01)09501101530003(99",            # broken parentheses
    "0109501101530003" + "10" + "A" * 21,  # batch over 20 characters
])
def test_malformed_gs1_is_not_gs1(text: str) -> None:
    assert classify(text, "]C1").kind == "unknown"


@pytest.mark.parametrize("code, brand", [
    ("134567890123456789", "wechat"), ("101234567890123456", "wechat"),
    ("2812345678901234", "alipay"), ("301234567890123456789012", "alipay"), ("251234567890123456", "alipay"),
])
def test_payment_codes_are_recognised_and_masked(code: str, brand: str) -> None:
    result = classify(code)
    assert (result.kind, result.details) == ("payment_code", {"brand": brand})
    assert result.display == mask_payment_code(code)
    assert code[2:-4] not in result.display and len(result.display) == len(code)


@pytest.mark.parametrize("code", ["164567890123456789", "13456789012345678", "2412345678901234", "311234567890123456"])
def test_near_payment_codes_are_not_payment_codes(code: str) -> None:
    assert classify(code).kind != "payment_code"


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("k, kind", [("m", "member"), ("c", "coupon"), ("p", "pickup")])
def test_signed_tokens_are_recognised_by_format(k: str, kind: str) -> None:
    token = f"{b64({'alg': 'EdDSA', 'kid': 'hq-2026'})}.{b64({'k': k, 'id': 'x1', 'exp': 1900000000})}.{'s' * 86}"
    result = classify(token)
    assert result.kind == kind
    assert result.details == {"token": {"alg": "EdDSA", "kid": "hq-2026"}, "verified": False}


def test_token_like_texts_that_are_not_tokens() -> None:
    assert classify(f"{b64({'alg': 'EdDSA'})}.{b64({'k': 'x'})}.{'s' * 40}").kind == "unknown"
    assert classify(f"{b64({'typ': 'JWT'})}.{b64({'k': 'm'})}.{'s' * 40}").kind == "unknown"
    assert classify("www.example.com").kind == "unknown"


def test_config_patterns_name_their_kind_but_never_outrank_payment_codes() -> None:
    classifier = Classifier([NamedPattern("staff_card", re.compile(r"EMP\d{6}")),
                             NamedPattern("anything_numeric", re.compile(r"\d+"))])
    assert classifier.classify("EMP001234").kind == "staff_card"
    assert classifier.classify("134567890123456789").kind == "payment_code"
    assert classifier.classify("6901234567892").kind == "anything_numeric"
    assert classifier.classify("EMP001234x").kind == "unknown"
