"""The wire protocol's parsers take any bytes: a typed value or ProtocolError with a reason, nothing else."""

from __future__ import annotations

import base64
import json
import uuid
import zlib

import pytest
from hypothesis import given, settings, strategies as st

from posedge.sync.ids import uuid7
from posedge.sync.protocol import (
    MAX_BATCH_BYTES,
    Ack,
    Batch,
    BatchEvents,
    Hello,
    ProtocolError,
    Topics,
    WireEvent,
    build_ack,
    build_batch,
    build_hello,
    parse_ack,
    parse_batch,
    parse_hello,
    parse_up_topic,
    status_changed,
)

STREAM = str(uuid7())


def events(first: int, count: int, size: int = 10) -> tuple[WireEvent, ...]:
    return tuple(WireEvent(first + i, str(uuid7()), "sale", f"sale-{i}", "2026-12-02T05:00:00.000+00:00",
                           {"sale_id": f"sale-{i}", "total_fen": 300, "note": "矿泉水" * size}) for i in range(count))


def batch(evs: tuple[WireEvent, ...], first_seq: int = 1) -> Batch:
    return Batch(str(uuid7()), "t1", "s1", STREAM, first_seq, "2026-12-02T05:00:00.000+00:00", evs)


@pytest.mark.parametrize("size", [1, 500], ids=["plain", "compressed"])
def test_a_batch_survives_the_wire_compressed_or_not(size: int) -> None:
    sent = batch(events(5, 2 if size == 1 else 20, size), first_seq=1)
    data = build_batch(sent)
    assert (b'"compression":"zlib"' in data) == (size == 500)
    got = parse_batch(data, "t1", "s1")
    assert got.events == sent.events and got.stream == STREAM and got.first_seq == 1


@settings(max_examples=60)
@given(st.lists(st.lists(st.integers(1, 400), max_size=6), max_size=8), st.sampled_from([0, 2, 64, 2048, 100_000]))
def test_a_batch_built_chunk_by_chunk_is_the_batch_built_at_once(chunks: list[list[int]], min_bytes: int) -> None:
    """Whatever chunks the drainer hands over: the same events, compressed exactly when the one-shot build
    compresses (the array's length against compress_min_bytes), decompressing to the same array."""
    evs = events(1, sum(len(c) for c in chunks))
    encoded = [json.dumps(e.as_dict(), ensure_ascii=False).encode() + b" " * pad
               for e, pad in zip(evs, [n for c in chunks for n in c])]
    chunked = BatchEvents(min_bytes)
    at = 0
    for chunk in chunks:
        chunked.add(encoded[at:at + len(chunk)])
        at += len(chunk)
    head = batch(())
    data = chunked.build(head)
    array = b"[" + b",".join(encoded) + b"]"
    assert chunked.count == len(encoded) and chunked.array_bytes == (len(array) if encoded else 1)
    envelope = json.loads(data)
    compressed = bool(min_bytes) and bool(encoded) and len(array) >= min_bytes
    assert envelope["compression"] == ("zlib" if compressed else "none")
    if compressed:
        assert zlib.decompress(base64.b64decode(envelope["events_zlib"])) == array
    else:
        assert data.endswith(b',"events":' + (array if encoded else b"[]") + b"}")
    if encoded:
        assert parse_batch(data, "t1", "s1").events == evs


def test_hello_and_ack_survive_the_wire() -> None:
    hello = Hello(str(uuid7()), "t1", "s1", STREAM, 1, 40, "0.1.0")
    assert parse_hello(build_hello(hello), "t1", "s1") == hello
    ack = Ack(str(uuid7()), "t1", "s1", STREAM, 40, 41, "reply", None, str(uuid7()))
    assert parse_ack(build_ack(ack), "t1", "s1") == ack


def test_a_batch_for_another_store_or_tenant_is_refused_with_its_reason() -> None:
    data = build_batch(batch(events(1, 2)))
    with pytest.raises(ProtocolError) as caught:
        parse_batch(data, "t1", "s2")
    assert caught.value.reason == "wrong_store"
    with pytest.raises(ProtocolError) as caught:
        parse_batch(data, "t2", "s1")
    assert caught.value.reason == "wrong_tenant"


def test_events_out_of_order_or_with_a_hole_are_refused() -> None:
    evs = events(1, 3)
    for broken in ((evs[0], evs[2]), (evs[1], evs[0])):
        with pytest.raises(ProtocolError, match="consecutive"):
            parse_batch(build_batch(batch(broken)), "t1", "s1")


def test_a_zlib_bomb_is_refused_before_it_is_inflated_whole() -> None:
    bomb = base64.b64encode(zlib.compress(b"[" + b" " * (MAX_BATCH_BYTES * 4) + b"]")).decode()
    envelope = {"v": 1, "type": "batch", "msg_id": "m", "tenant": "t1", "store": "s1", "stream": STREAM,
                "first_seq": 1, "sent_at": "x", "compression": "zlib", "events_zlib": bomb}
    with pytest.raises(ProtocolError) as caught:
        parse_batch(json.dumps(envelope).encode(), "t1", "s1")
    assert caught.value.reason == "too_large"


def test_up_topics_name_tenant_store_and_message() -> None:
    assert parse_up_topic("posedge/v1/t1/s1/up/batch") == ("t1", "s1", "batch")
    for bad in ("posedge/v1/t1/s1/down/ack", "posedge/v2/t1/s1/up/batch", "posedge/v1/t1/all/up/batch",
                "posedge/v1/t 1/s1/up/batch", "posedge/v1/t1/s1/up/batch/more"):
        with pytest.raises(ProtocolError):
            parse_up_topic(bad)
    with pytest.raises(ValueError):
        Topics("t1", "s/1")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20)


def ack_like() -> st.SearchStrategy[dict[str, object]]:
    fields = {"v": st.sampled_from([1, 1, 2, "1", None]), "type": st.sampled_from(["ack", "batch", 3]),
              "msg_id": st.text(max_size=70) | json_values, "tenant": st.sampled_from(["t1", "t2", None]),
              "store": st.sampled_from(["s1", "s2"]),
              "stream": st.sampled_from([STREAM, STREAM.upper(), "x"]) | json_values,
              "acked_seq": st.integers(min_value=-2, max_value=2**64) | json_values,
              "gap_from": st.none() | st.integers(min_value=-2, max_value=2**64) | json_values,
              "error": st.none() | st.sampled_from(["seq_conflict", "nope"]) | json_values,
              "acked_event_id": st.none() | st.just(str(uuid.uuid4())) | json_values}
    return st.fixed_dictionaries({}, optional=fields)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), ack_like().map(lambda d: json.dumps(d).encode()),
                 json_values.map(lambda v: json.dumps(v).encode())))
def test_any_bytes_on_the_ack_topic_give_an_ack_or_a_protocol_error(data: bytes) -> None:
    try:
        ack = parse_ack(data, "t1", "s1")
    except ProtocolError as exc:
        assert exc.reason in {"not_json", "bad_schema", "bad_version", "wrong_tenant", "wrong_store", "bad_field",
                              "too_large"}
        return
    assert ack.tenant == "t1" and ack.store == "s1" and 0 <= ack.acked_seq < 2**63
    assert ack.gap_from is None or ack.gap_from > ack.acked_seq


@settings(max_examples=200, deadline=None)
@given(json_values, st.sampled_from(["none", "zlib"]))
def test_any_events_field_gives_a_batch_or_a_protocol_error(value: object, compression: str) -> None:
    envelope: dict[str, object] = {"v": 1, "type": "batch", "msg_id": "m", "tenant": "t1", "store": "s1",
                                   "stream": STREAM, "first_seq": 1, "sent_at": "x", "compression": compression}
    raw = json.dumps(value).encode()
    if compression == "zlib":
        envelope["events_zlib"] = base64.b64encode(zlib.compress(raw)).decode()
    else:
        envelope["events"] = value
    try:
        got = parse_batch(json.dumps(envelope).encode(), "t1", "s1")
    except ProtocolError as exc:
        assert exc.reason in {"not_json", "bad_field", "too_large"}
        return
    seqs = [e.seq for e in got.events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))) and all(isinstance(e.payload, dict) for e in got.events)


def test_sync_and_the_reference_hq_load_without_the_agent() -> None:
    """docs/architecture.md: sync/ depends on nothing of ours but sync/, hq/ only on sync/."""
    import subprocess
    import sys

    code = ("import sys, posedge.hq.cli, posedge.hq.consumer, posedge.hq.keys, posedge.sync.link, "
            "posedge.sync.drainer, posedge.sync.codes; "
            "print(sorted(m for m in sys.modules if m.startswith(('posedge.agent', 'posedge.drivers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


STATUS_FIELDS = st.dictionaries(st.sampled_from(["outbox_depth", "printers", "scanners"]),
                                st.one_of(st.none(), st.integers(), st.text(max_size=5)))
CLOCK_VALUES = st.one_of(st.none(), st.floats(min_value=0, max_value=1e6))


@given(STATUS_FIELDS, CLOCK_VALUES, CLOCK_VALUES, CLOCK_VALUES)
def test_a_status_changes_only_with_a_field_not_driven_by_the_clock_or_a_clock_field_turning_null(
        fields: dict, age: float | None, later_age: float | None, hours: float | None) -> None:
    last = {**fields, "oldest_pending_age_s": age, "hours_since_hq": hours}
    now = {**last, "oldest_pending_age_s": later_age}
    assert status_changed(None, last)  # nothing published yet: always publish
    assert status_changed(last, now) == ((age is None) != (later_age is None))
    assert status_changed(last, {**last, "outbox_depth": ("other", last.get("outbox_depth"))})


def test_the_ages_moving_with_the_clock_are_no_change_but_turning_null_is() -> None:
    last = {"outbox_depth": 2, "oldest_pending_age_s": 3.0, "hours_since_hq": 0.5}
    assert not status_changed(last, {**last, "oldest_pending_age_s": 9.5, "hours_since_hq": 1.25})
    assert status_changed(last, {**last, "oldest_pending_age_s": None})
    assert status_changed(last, {**last, "outbox_depth": 3})
