"""The store layer on real SQLite files: group commit, migrations, and failures that lose nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest

from posedge.agent.errors import StorageBusy, StorageCorrupt, StorageFull, StorageReadOnly
from posedge.agent.store import schema
from posedge.agent.store.writer import StoreWriter


def insert(key: str, fail: bool = False):
    """Work that inserts `key` (and then raises, when `fail`)."""
    def work(conn: sqlite3.Connection) -> str:
        conn.execute("INSERT INTO receipt_counters VALUES (?, 1)", (key,))
        if fail:
            raise ValueError("refused")
        return key
    return work


@pytest.fixture
def writer(tmp_path: Path):
    w = StoreWriter(tmp_path / "s.db", group_commit_max=32)
    assert w.start() is None
    yield w
    w.stop()


def test_database_is_wal_with_full_sync(writer: StoreWriter) -> None:
    mode, sync = writer.submit(lambda c: (c.execute("PRAGMA journal_mode").fetchone()[0],
                                          c.execute("PRAGMA synchronous").fetchone()[0])).result(5)
    assert (mode, sync) == ("wal", 2)  # 2 = FULL


def test_failing_work_is_rolled_back_alone_in_a_shared_commit(writer: StoreWriter) -> None:
    gate = threading.Event()
    blocker = writer.submit(lambda c: gate.wait(5))  # holds the writer so the next three share a batch

    ok1, bad, ok2 = writer.submit(insert("a")), writer.submit(insert("b", fail=True)), writer.submit(insert("c"))
    gate.set()
    assert blocker.result(5) is True
    assert (ok1.result(5), ok2.result(5)) == ("a", "c")
    with pytest.raises(ValueError):
        bad.result(5)
    query = "SELECT business_day FROM receipt_counters ORDER BY 1"
    keys = writer.submit(lambda c: [r[0] for r in c.execute(query)]).result(5)
    assert keys == ["a", "c"]


def schema_of(conn: sqlite3.Connection) -> list[tuple]:
    return conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
                        " ORDER BY name").fetchall()


@pytest.mark.parametrize("start_version", range(schema.latest_version()))
def test_database_upgrades_from_every_earlier_schema(tmp_path: Path, start_version: int) -> None:
    old = tmp_path / "old.db"
    conn = sqlite3.connect(old, isolation_level=None)
    schema.migrate(conn, target=start_version)
    assert schema.current_version(conn) == start_version
    conn.close()

    w = StoreWriter(old)
    assert w.start() is None
    w.stop()

    fresh = sqlite3.connect(tmp_path / "fresh.db", isolation_level=None)
    schema.migrate(fresh)
    upgraded = sqlite3.connect(old)
    assert schema.current_version(upgraded) == schema.latest_version()
    assert schema_of(upgraded) == schema_of(fresh)


def test_database_from_a_newer_posedge_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {schema.latest_version() + 1}")
    conn.close()
    w = StoreWriter(path)
    failure = w.start()
    w.stop()
    assert failure is not None and "newer posedge" in failure.message


def test_corrupt_file_is_reported_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "posedge.db"
    garbage = os.urandom(64 * 1024)
    path.write_bytes(garbage)
    w = StoreWriter(path)
    failure = w.start()
    assert isinstance(failure, StorageCorrupt)
    assert str(path) in failure.message
    with pytest.raises(StorageCorrupt):
        w.submit(lambda c: c.execute("CREATE TABLE x (a)")).result(5)
    w.stop()
    assert path.read_bytes() == garbage


def test_read_only_database_is_reported(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    w = StoreWriter(folder / "ro.db")
    assert w.start() is None
    w.stop()
    if os.geteuid() == 0:  # root ignores file modes: make the filesystem itself read-only
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
    else:
        for p in folder.iterdir():
            p.chmod(0o444)
        folder.chmod(0o555)
    try:
        w = StoreWriter(folder / "ro.db")
        failure = w.start()
        w.stop()
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)
        else:
            folder.chmod(0o755)
    assert isinstance(failure, StorageReadOnly), failure
    assert "read-only" in failure.message


def test_database_locked_by_another_process_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    w = StoreWriter(path, busy_timeout_ms=100)
    assert w.start() is None
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(StorageBusy) as caught:
        w.submit(lambda c: c.execute("INSERT INTO receipt_counters VALUES ('x', 1)")).result(10)
    other.execute("ROLLBACK")
    other.close()
    assert "locked by another process" in caught.value.message
    assert w.submit(lambda c: c.execute("INSERT INTO receipt_counters VALUES ('x', 1)").rowcount).result(10) == 1
    w.stop()


def test_full_disk_fails_the_write_whole_and_recovers(small_disk: Path) -> None:
    w = StoreWriter(small_disk / "full.db")
    assert w.start() is None
    filler = small_disk / "filler"

    def big_row(n: int):
        return lambda c: c.execute("INSERT INTO receipt_counters VALUES (?, ?)", (f"{n}-" + "x" * 20000, n))

    with pytest.raises(StorageFull) as caught:
        with open(filler, "wb") as f:
            f.write(b"\0" * (small_disk_free(small_disk) - 64 * 1024))
        for n in range(1000):
            w.submit(big_row(n)).result(5)
    assert str(small_disk / "full.db") in caught.value.message
    assert w.failure is not None
    filler.unlink()
    assert w.submit(lambda c: c.execute("INSERT INTO receipt_counters VALUES ('after', 1)").rowcount).result(5) == 1
    assert w.failure is None
    w.stop()
    check = sqlite3.connect(small_disk / "full.db")
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    check.close()


def small_disk_free(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize
