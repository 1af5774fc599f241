"""The drainer over a real agent database, with HQ's acks built by the protocol: gaps, timeouts, new streams.

No broker here: what the broker could do (lose a batch, lose an ack, deliver an old stream's ack) is
played by which acks reach the drainer. The end-to-end runs are in test_uplink.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from posedge.agent.config import validate_config
from posedge.agent.hq_sync.feature import StoreOutbox, ensure_stream
from posedge.agent.store.reader import StoreReader
from posedge.agent.store.writer import StoreWriter
from posedge.sync import outbox
from posedge.sync.drainer import Drainer, DrainSettings
from posedge.sync.ids import uuid7
from posedge.sync.protocol import Ack, Topics, build_ack, encode_event, parse_batch

TOPICS = Topics("t1", "s1")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StoreOutbox]:
    config = validate_config({"store": {"tenant": "t1", "id": "s1"}, "storage": {"path": str(tmp_path / "s.db")},
                              "scanners": [], "printers": []})
    writer = StoreWriter(config.storage.path)
    assert writer.start() is None
    reader = StoreReader(config.storage.path)
    stream = writer.submit(lambda c: ensure_stream(c, None)).result(5)

    def fill(conn: object) -> None:
        for i in range(100):
            outbox.append_event(conn, "sale", f"sale-{i}", {"sale_id": f"sale-{i}"})  # type: ignore[arg-type]
    writer.submit(fill).result(5)
    yield StoreOutbox(config, reader, writer, stream)
    writer.stop()
    reader.close()


def drainer(store: StoreOutbox, clock: Clock) -> tuple[Drainer, list[tuple[str, bytes]]]:
    """Connected: the hello and one batch at once (HQ's answer is not waited for); the window opens on it."""
    d = Drainer(TOPICS, store, DrainSettings(batch_max_events=10, window=4, ack_timeout_s=5), "test", clock)
    d.on_connected()
    first = d.publishes()
    assert [t for t, _ in first] == [TOPICS.up_hello, TOPICS.up_batch]
    d.on_ack(ack(d, 0))  # HQ has never seen the stream
    return d, first[1:] + d.publishes()


def ack(d: Drainer, acked: int, gap_from: int | None = None, event_id: str | None = None, error: str | None = None,
        stream: str | None = None) -> bytes:
    stream = stream or d.stream.stream_id
    return build_ack(Ack(str(uuid7()), "t1", "s1", stream, acked, gap_from, None, error, event_id))


def sent_ranges(publishes: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
    ranges = []
    for topic, data in publishes:
        assert topic == TOPICS.up_batch
        batch = parse_batch(data, "t1", "s1")
        ranges.append((batch.events[0].seq, batch.events[-1].seq))
    return ranges


def pending_seqs(store: StoreOutbox) -> list[int]:
    return [e.seq for e in store.read_pending(0, 1000)]


def test_the_window_bounds_what_is_out_and_an_ack_opens_it(store: StoreOutbox) -> None:
    d, sent = drainer(store, Clock())
    assert sent_ranges(sent) == [(1, 10), (11, 20), (21, 30), (31, 40)]
    assert d.publishes() == []  # four batches out, none acknowledged: nothing more
    d.on_ack(ack(d, 20, event_id=store.event_id_at(20)))
    assert sent_ranges(d.publishes()) == [(41, 50), (51, 60)]
    store.writer.submit(lambda c: None).result(5)  # the acked mark went to the writer before this
    assert pending_seqs(store)[0] == 21


def test_a_batch_is_built_a_chunk_at_a_time_giving_way_before_each_chunk(store: StoreOutbox,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The link's till check runs before each chunk of a batch is encoded, never inside one nor when there is
    nothing to send, and the chunks make one batch of consecutive events whatever their sizes."""
    monkeypatch.setattr("posedge.sync.drainer.CHUNK_EVENTS", 7)
    d = Drainer(TOPICS, store, DrainSettings(batch_max_events=30, window=1), "test", Clock())
    reads: list[int] = []
    read_pending = store.read_pending
    monkeypatch.setattr(store, "read_pending", lambda after, limit: reads.append(limit) or read_pending(after, limit))
    gave_way_after: list[int] = []
    d.give_way = lambda: gave_way_after.append(len(reads))
    d.on_connected()
    out = d.publishes()
    assert sent_ranges(out[1:]) == [(1, 30)]
    assert reads == [7, 7, 7, 7, 2] and gave_way_after == [1, 2, 3, 4, 5]  # before each chunk is encoded
    d.on_ack(ack(d, 30))
    d.on_ack(ack(d, 30))  # the window opens on the next publishes
    reads.clear()
    gave_way_after.clear()
    d.settings = DrainSettings(batch_max_events=500, window=1)
    assert sent_ranges(d.publishes()) == [(31, 100)]  # the outbox's end: a short read ends the batch
    assert reads == [7] * 10 + [7] and gave_way_after == list(range(1, 11))  # not after the empty read
    reads.clear()
    gave_way_after.clear()
    d.on_ack(ack(d, 100))
    assert d.publishes() == [] and reads == [7] and gave_way_after == []  # nothing to send: no wait


def test_a_chunked_batch_stops_at_batch_max_bytes_inside_a_chunk(store: StoreOutbox,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch holds as many events as fit in batch_max_bytes of encoded events, wherever a chunk ends."""
    monkeypatch.setattr("posedge.sync.drainer.CHUNK_EVENTS", 4)
    sizes = {e.seq: len(encode_event(e.seq, e.event_id, e.kind, e.key, e.created_at, e.payload_json))
             for e in store.read_pending(0, 1000)}
    limit = sizes[1] * 6 + 10
    d = Drainer(TOPICS, store, DrainSettings(batch_max_events=100, batch_max_bytes=limit, window=20), "test",
                Clock())
    d.on_connected()
    d.on_ack(ack(d, 0))
    ranges = sent_ranges(d.publishes()[1:])
    assert [r[0] for r in ranges] == [1] + [r[1] + 1 for r in ranges[:-1]] and ranges[-1][1] == 100
    for first, last in ranges[:-1]:
        taken = sum(sizes[s] for s in range(first, last + 1))
        assert taken <= limit < taken + sizes[last + 1]


def test_a_gap_rewinds_once_and_sends_from_it(store: StoreOutbox) -> None:
    d, _ = drainer(store, Clock())  # sent 1-10 .. 31-40; the broker lost 11-20
    for _ in range(3):  # HQ answers each later batch with the same gap
        d.on_ack(ack(d, 10, gap_from=11, event_id=store.event_id_at(10)))
    assert sent_ranges(d.publishes()) == [(11, 20), (21, 30), (31, 40), (41, 50)]
    assert d.status()["gaps"] == 1


def test_no_ack_within_the_timeout_sends_again_from_the_first_unacked(store: StoreOutbox) -> None:
    clock = Clock()
    d, _ = drainer(store, clock)
    clock.now += 4
    assert d.publishes() == []
    clock.now += 2  # past ack_timeout_s of the oldest batch: one batch again, as a probe
    assert sent_ranges(d.publishes()) == [(1, 10)]
    clock.now += 6
    assert sent_ranges(d.publishes()) == [(1, 10)]  # HQ still silent: still one batch a timeout
    d.on_ack(ack(d, 10, event_id=store.event_id_at(10)))
    assert sent_ranges(d.publishes()) == [(11, 20), (21, 30), (31, 40), (41, 50)]
    assert d.status()["ack_timeouts"] == 2


def test_an_ack_naming_another_event_at_its_position_starts_a_new_stream(store: StoreOutbox, tmp_path: Path) -> None:
    d, _ = drainer(store, Clock())
    old = d.stream.stream_id
    d.on_ack(ack(d, 10, event_id=str(uuid7())))  # HQ holds another event at seq 10: this database renumbered
    assert d.stream.stream_id != old and d.stream.reason == "seq_conflict" and d.stream.first_seq == 1
    assert (tmp_path / "s.db.stream").read_text().strip() == d.stream.stream_id
    again = d.publishes()
    assert again[0][0] == TOPICS.up_hello and sent_ranges(again[1:]) == [(1, 10)]  # all again, on the new stream


def test_an_ack_past_the_outbox_end_is_stream_behind_and_an_old_streams_ack_is_ignored(store: StoreOutbox) -> None:
    d, _ = drainer(store, Clock())
    d.on_ack(ack(d, 5, stream=str(uuid7())))
    assert d.status()["rejected_acks"] == {"other_stream": 1} and d.acked_seq == 0
    d.on_ack(ack(d, 500))
    assert d.stream.reason == "stream_behind" and d.acked_seq == 0
