"""Outbox seq is gap-free and never reused; the stream is born with the database and again on a restore."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings, strategies as st

from posedge.agent.hq_sync.feature import ensure_stream
from posedge.agent.store.writer import StoreWriter
from posedge.sync import outbox, stream as streams


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[StoreWriter]:
    w = StoreWriter(tmp_path / "s.db", group_commit_max=32)
    assert w.start() is None
    yield w
    w.stop()


def append(fail: bool = False):  # type: ignore[no-untyped-def]
    def work(conn: sqlite3.Connection) -> str:
        event_id = outbox.append_event(conn, "sale", "k", {"total_fen": 1})
        if fail:
            raise ValueError("the sale was refused after its event was appended")
        return event_id
    return work


def seqs(writer: StoreWriter) -> list[int]:
    return writer.submit(lambda c: [r[0] for r in c.execute("SELECT seq FROM outbox ORDER BY seq")]).result(5)


def test_a_job_rolled_back_inside_a_shared_commit_burns_no_seq(writer: StoreWriter) -> None:
    gate = threading.Event()
    blocker = writer.submit(lambda c: gate.wait(5))  # the next jobs share one transaction, each in a SAVEPOINT
    jobs = [writer.submit(append(fail=i % 3 == 1)) for i in range(9)]
    gate.set()
    blocker.result(5)
    done = sum(1 for j in jobs if j.exception(5) is None)
    assert seqs(writer) == list(range(1, done + 1))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_committed_seqs_are_one_to_n_whatever_rolls_back(tmp_path_factory: pytest.TempPathFactory,
                                                        fails: list[bool]) -> None:
    writer = StoreWriter(tmp_path_factory.mktemp("db") / "s.db")
    assert writer.start() is None
    try:
        results = [writer.submit(append(fail)) for fail in fails]
        ok = sum(1 for r in results if r.exception(5) is None)
        assert ok == fails.count(False)
        assert seqs(writer) == list(range(1, ok + 1))
    finally:
        writer.stop()


def test_a_seq_is_never_handed_out_again_after_its_row_is_deleted(writer: StoreWriter) -> None:
    for _ in range(3):
        writer.submit(append()).result(5)
    writer.submit(lambda c: c.execute("DELETE FROM outbox WHERE seq >= 2")).result(5)
    writer.submit(append()).result(5)
    assert seqs(writer) == [1, 4]
    assert writer.submit(streams.last_seq_ever).result(5) == 4


def test_a_new_database_is_born_with_a_stream_starting_at_seq_one(writer: StoreWriter) -> None:
    born = writer.submit(lambda c: ensure_stream(c, None)).result(5)
    assert (born.reason, born.first_seq) == ("new_database", 1)
    assert writer.submit(lambda c: ensure_stream(c, born.stream_id)).result(5) == born  # the same database again


def test_a_database_that_does_not_match_its_marker_starts_a_new_stream_at_the_oldest_unacked_event(
        writer: StoreWriter, tmp_path: Path) -> None:
    born = writer.submit(lambda c: ensure_stream(c, None)).result(5)
    for _ in range(5):
        writer.submit(append()).result(5)
    writer.submit(lambda c: outbox.mark_acked_through(c, 3)).result(5)
    other = writer.submit(lambda c: ensure_stream(c, "0190aaaa-0000-7000-8000-000000000000")).result(5)
    assert other.stream_id != born.stream_id and (other.reason, other.first_seq) == ("restored", 4)
    missing = writer.submit(lambda c: ensure_stream(c, None)).result(5)  # the marker is gone: not this PC's file
    assert missing.stream_id != other.stream_id and missing.reason == "restored"
    writer.submit(lambda c: outbox.mark_acked_through(c, 5)).result(5)
    assert writer.submit(lambda c: streams.birth_stream(c, "seq_conflict")).result(5).first_seq == 6


def test_the_marker_is_written_atomically_beside_the_database(tmp_path: Path) -> None:
    db = tmp_path / "posedge.db"
    assert streams.read_marker(db) is None
    streams.write_marker(db, "0190aaaa-0000-7000-8000-000000000000")
    assert streams.read_marker(db) == "0190aaaa-0000-7000-8000-000000000000"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["posedge.db.stream"]
