"""The down path's messages (sync/down.py): what one end builds the other parses back, and untrusted bytes
only ever give a typed value or a ProtocolError with a reason."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings, strategies as st

from posedge.sync.down import (
    ConfirmReply,
    ConfirmRequest,
    DownAck,
    HqPresence,
    Records,
    Versions,
    build_confirm,
    build_confirm_reply,
    build_down_ack,
    build_hq,
    build_records,
    build_versions,
    down_topic,
    parse_confirm,
    parse_confirm_reply,
    parse_down_ack,
    parse_down_topic,
    parse_hq,
    parse_records,
    parse_versions,
    store_down_subscriptions,
)
from posedge.sync.protocol import ProtocolError, Topics

TOPICS = Topics("demo", "store-1")


def test_topics_of_both_scopes_parse_back() -> None:
    assert down_topic(TOPICS, "members") == "posedge/v1/demo/store-1/down/members"
    assert down_topic(TOPICS, "config", "tenant") == "posedge/v1/demo/all/down/config"
    assert parse_down_topic("posedge/v1/demo/store-1/down/members") == ("demo", "store-1", "members")
    assert parse_down_topic("posedge/v1/demo/all/down/config") == ("demo", None, "config")
    assert store_down_subscriptions(TOPICS) == ("posedge/v1/demo/store-1/down/#", "posedge/v1/demo/all/down/#")
    for bad in ("posedge/v1/demo/store-1/down/nope", "posedge/v1/demo/store-1/up/batch", "posedge/v2/a/b/down/ack",
                "posedge/v1/de mo/s/down/ack", "posedge/v1/demo/store-1/down/members/x"):
        with pytest.raises(ProtocolError) as caught:
            parse_down_topic(bad)
        assert caught.value.reason == "bad_topic"


def test_round_trips() -> None:
    doc = Records("m1", "demo", "store-1", "members", 42, ({"member_id": "m-1", "version": 7},))
    assert parse_records(build_records(doc), "demo", "store-1", "members") == doc
    wide = Records("m2", "demo", None, "stock", 3, ())
    assert parse_records(build_records(wide), "demo", None, "stock") == wide
    versions = Versions("m3", "demo", "store-1", {"store": {"members": 42}, "tenant": {"config": 2}})
    assert parse_versions(build_versions(versions), "demo", "store-1") == versions
    ack = DownAck("m4", "demo", "store-1", "members", "store", 42, "applied", None, "m1",
                  {"applied": 1, "ignored": 0, "invalid": 0})
    assert parse_down_ack(build_down_ack(ack), "demo", "store-1") == ack
    request = ConfirmRequest("m5", "demo", "store-1", "store-1-t1-9", "c-1", "spring", 500, "t1", "s-1", None)
    assert parse_confirm(build_confirm(request), "demo", "store-1") == request
    reply = ConfirmReply("m6", "demo", "store-1", "m5", "store-1-t1-9", False, "already_redeemed")
    assert parse_confirm_reply(build_confirm_reply(reply), "demo", "store-1") == reply
    beijing = timezone(timedelta(hours=8))
    presence = HqPresence("m7", "demo", "online", "s-1", datetime(2026, 12, 2, 18, 0, tzinfo=beijing))
    assert parse_hq(build_hq(presence), "demo") == presence
    assert down_topic(TOPICS, "hq", "tenant") == "posedge/v1/demo/all/down/hq"


def test_hq_presence_is_parsed_strictly() -> None:
    good = {"v": 1, "type": "hq", "msg_id": "m", "tenant": "demo", "state": "online", "hq_session": "s",
            "at": "2026-12-02T10:00:00+00:00"}
    cases = (({"state": "away"}, "bad_field"), ({"at": "2026-12-02T10:00:00"}, "bad_field"),
             ({"at": "yesterday"}, "bad_field"), ({"hq_session": ""}, "bad_field"),
             ({"store": "store-1"}, "wrong_store"), ({"tenant": "other"}, "wrong_tenant"),
             ({"type": "records"}, "bad_schema"), ({"v": 2}, "bad_version"))
    for change, reason in cases:
        with pytest.raises(ProtocolError) as caught:
            parse_hq(__import__("orjson").dumps({**good, **change}), "demo")
        assert caught.value.reason == reason, change


def test_a_document_for_another_scope_or_kind_is_refused() -> None:
    doc = build_records(Records("m1", "demo", "store-1", "members", 1, ()))
    cases = ((("demo", "store-2", "members"), "wrong_store"), (("demo", None, "members"), "wrong_store"),
             (("other", "store-1", "members"), "wrong_tenant"), (("demo", "store-1", "stock"), "bad_schema"))
    for args, reason in cases:
        with pytest.raises(ProtocolError) as caught:
            parse_records(doc, *args)
        assert caught.value.reason == reason


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_size=8).map(lambda d: __import__("orjson").dumps({"v": 1, "tenant": "demo", "store": "store-1", **d}))))
def test_any_bytes_give_a_value_or_a_protocol_error(data: bytes) -> None:
    for parse in (lambda b: parse_records(b, "demo", "store-1", "members"),
                  lambda b: parse_versions(b, "demo", "store-1"),
                  lambda b: parse_down_ack(b, "demo", "store-1"), lambda b: parse_confirm(b, "demo", "store-1"),
                  lambda b: parse_confirm_reply(b, "demo", "store-1"), lambda b: parse_hq(b, "demo")):
        try:
            parse(data)
        except ProtocolError as exc:
            assert exc.reason
