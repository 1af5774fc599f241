"""The writer's two paths on real SQLite files: a write alone commits on the loop, writes together
share a commit in the writer thread, another process's lock is never waited for on the loop, and
the writer's own checkpoints keep the WAL from growing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from posedge.agent.errors import StorageFull
from posedge.agent.store.checkpointer import CHECKPOINT_PAGES
from posedge.agent.store.writer import RECENT_COMMITS, StoreWriter, disk_is_fast
from test_store import insert, small_disk_free


def keys(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT business_day FROM receipt_counters ORDER BY 1")]
    finally:
        conn.close()


@pytest.fixture
def writer(tmp_path: Path):
    w = StoreWriter(tmp_path / "w.db", inline_max_ms=1000)  # any disk counts as fast: the paths are under test
    assert w.start() is None
    yield w
    w.stop()


async def warm_up(w: StoreWriter) -> None:
    for n in range(RECENT_COMMITS):
        await w.write(insert(f"warm-{n:02d}"))


def test_the_disk_must_prove_fast_before_any_commit_runs_on_the_loop() -> None:
    fast, limit = 0.0005, 0.002
    assert not disk_is_fast([fast] * (RECENT_COMMITS - 1), limit)  # not enough known yet
    assert disk_is_fast([fast] * RECENT_COMMITS, limit)
    quarter = RECENT_COMMITS // 4
    assert disk_is_fast([fast] * (RECENT_COMMITS - quarter) + [0.003] * quarter, limit)  # a few slowish ones
    assert not disk_is_fast([fast] * (RECENT_COMMITS - quarter - 1) + [0.003] * (quarter + 1), limit)  # slow disk
    assert not disk_is_fast([fast] * (RECENT_COMMITS - 1) + [0.011], limit)  # one stall is enough
    assert not disk_is_fast([fast] * RECENT_COMMITS, 0)  # inline_max_ms = 0: never


def test_a_write_alone_commits_on_the_loop_and_is_on_disk(writer: StoreWriter) -> None:
    async def main() -> None:
        await warm_up(writer)
        before = dict(writer.counts)
        assert await writer.write(insert("alone")) == "alone"
        assert writer.counts["inline"] == before["inline"] + 1 and writer.counts["batches"] == before["batches"]

    asyncio.run(main())
    assert "alone" in keys(writer.path)  # another connection sees it: committed


def test_writes_arriving_together_share_one_commit_in_the_thread(writer: StoreWriter) -> None:
    async def main() -> list[str]:
        await warm_up(writer)
        before = dict(writer.counts)
        done = await asyncio.gather(*(writer.write(insert(f"till-{n}")) for n in range(4)))
        assert writer.counts["inline"] == before["inline"]
        assert writer.counts["batched_jobs"] - before["batched_jobs"] == 4
        assert writer.counts["batches"] - before["batches"] < 4  # at least two shared a commit
        return done

    assert asyncio.run(main()) == [f"till-{n}" for n in range(4)]


def test_a_failing_write_on_the_loop_is_rolled_back_and_the_next_one_commits(writer: StoreWriter) -> None:
    async def main() -> None:
        await warm_up(writer)
        inline = writer.counts["inline"]
        with pytest.raises(ValueError, match="refused"):
            await writer.write(insert("bad", fail=True))
        assert await writer.write(insert("good")) == "good"
        assert writer.counts["inline"] == inline + 2

    asyncio.run(main())
    assert "bad" not in keys(writer.path) and "good" in keys(writer.path)


def test_another_process_lock_is_waited_for_in_the_thread_never_on_the_loop(writer: StoreWriter) -> None:
    other = sqlite3.connect(writer.path, isolation_level=None)

    async def main() -> None:
        await warm_up(writer)
        other.execute("BEGIN IMMEDIATE")  # as `posedge data import` would, from another process
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticking = asyncio.create_task(ticker())
        write = asyncio.create_task(writer.write(insert("after-lock")))
        await asyncio.sleep(0.3)
        assert not write.done()
        assert ticks >= 10  # the loop kept running while the write waited
        other.execute("ROLLBACK")
        assert await asyncio.wait_for(write, 5) == "after-lock"
        ticking.cancel()
        assert writer.counts["batched_jobs"] >= 1

    try:
        asyncio.run(main())
    finally:
        other.close()
    assert "after-lock" in keys(writer.path)


def test_inline_max_ms_zero_sends_every_write_through_the_thread(tmp_path: Path) -> None:
    w = StoreWriter(tmp_path / "t.db", inline_max_ms=0)
    assert w.start() is None

    async def main() -> None:
        for n in range(RECENT_COMMITS + 5):
            await w.write(insert(f"k{n:02d}"))

    asyncio.run(main())
    assert w.counts["inline"] == 0 and w.counts["batched_jobs"] == RECENT_COMMITS + 5
    w.stop()


def test_the_writer_checkpoints_so_the_wal_stays_bounded(writer: StoreWriter) -> None:
    row = "x" * 3000  # about one page per commit

    async def main() -> None:
        for n in range(3 * CHECKPOINT_PAGES):
            await writer.write(lambda c, n=n: c.execute("INSERT INTO receipt_counters VALUES (?, ?)",
                                                        (f"{n}-{row}", n)))

    asyncio.run(main())
    assert writer.counts["inline"] > 2 * CHECKPOINT_PAGES  # the commits ran on the loop: no automatic checkpoint
    assert writer.checkpointer.counts["checkpoints"] >= 2
    wal = writer.path.with_name(writer.path.name + "-wal").stat().st_size
    assert wal < 3 * CHECKPOINT_PAGES * 4096, wal  # without checkpoints it would hold ~3000 pages and more


def test_a_full_disk_on_the_loop_fails_the_write_whole_and_recovers(small_disk: Path) -> None:
    w = StoreWriter(small_disk / "full.db", inline_max_ms=1000)
    assert w.start() is None
    filler = small_disk / "filler"

    async def main() -> None:
        await warm_up(w)
        inline = w.counts["inline"]
        with open(filler, "wb") as f:
            f.write(b"\0" * (small_disk_free(small_disk) - 64 * 1024))
        with pytest.raises(StorageFull):
            for n in range(1000):
                await w.write(lambda c, n=n: c.execute("INSERT INTO receipt_counters VALUES (?, ?)",
                                                       (f"{n}-" + "x" * 20000, n)))
        assert w.counts["inline"] > inline  # the failure met the loop path, not only the thread
        assert w.failure is not None
        filler.unlink()
        assert await w.write(insert("after")) == "after"  # through the thread: the disk must prove itself again
        assert w.failure is None

    asyncio.run(main())
    w.stop()
    check = sqlite3.connect(small_disk / "full.db")
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def test_bookkeeping_alone_commits_relaxed_and_the_connection_is_full_again(writer: StoreWriter) -> None:
    """synchronous: 2 = FULL (fsync at COMMIT), 1 = NORMAL. A batch is relaxed only when all of it is."""
    level = lambda c: c.execute("PRAGMA synchronous").fetchone()[0]  # noqa: E731
    assert writer.submit(level, durable=False).result(5) == 1
    assert writer.submit(level).result(5) == 2
    gate = threading.Event()
    blocker = writer.submit(lambda c: gate.wait(5), durable=False)  # holds the thread: the next two share a batch
    mixed = [writer.submit(level, durable=False), writer.submit(level)]
    gate.set()
    blocker.result(5)
    assert [f.result(5) for f in mixed] == [2, 2]
    assert writer.counts["relaxed_batches"] >= 1

    async def main() -> int:
        await warm_up(writer)
        return await writer.write(level)  # on the loop: always durable

    assert asyncio.run(main()) == 2


def test_loop_writes_and_thread_submits_mixed_lose_nothing_and_double_nothing(writer: StoreWriter) -> None:
    """GIVEN tills writing from the loop (alone and together), print workers submitting from threads
    (durable and not), and failing writes among them WHEN they all run at once THEN every successful
    write is stored exactly once, every failed one not at all, and both paths were used."""
    from conftest import SLOW

    rounds = 400 if SLOW else 60
    expected: set[str] = set()
    refused: set[str] = set()

    def from_thread(worker: int) -> None:
        for n in range(rounds):
            key = f"t{worker}-{n:04d}"
            fail = n % 7 == 3
            future = writer.submit(insert(key, fail), durable=n % 2 == 0)
            try:
                assert future.result(10) == key
                expected.add(key)
            except ValueError:
                refused.add(key)

    async def till(name: str, pause: float) -> None:
        for n in range(rounds):
            key = f"{name}-{n:04d}"
            try:
                assert await writer.write(insert(key, n % 5 == 4)) == key
                expected.add(key)
            except ValueError:
                refused.add(key)
            await asyncio.sleep(pause)

    async def main() -> None:
        await warm_up(writer)
        threads = [threading.Thread(target=from_thread, args=(w,)) for w in range(2)]
        for t in threads:
            t.start()
        await asyncio.gather(till("alone", 0.002), till("busy-a", 0), till("busy-b", 0))
        for t in threads:
            await asyncio.to_thread(t.join, 30)

    asyncio.run(main())
    stored = [k for k in keys(writer.path) if not k.startswith("warm-")]
    assert len(stored) == len(set(stored))  # nothing twice
    assert set(stored) == expected and not (refused & set(stored))
    assert len(expected) + len(refused) == 5 * rounds
    assert writer.counts["inline"] > 0 and writer.counts["batched_jobs"] > writer.counts["batches"]
