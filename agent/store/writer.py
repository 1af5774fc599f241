"""The single writer: one SQLite connection, one thread, every domain write.

Callers submit `work(conn) -> T`. The writer takes whatever work is queued (up to
`group_commit_max`), runs each piece in its own SAVEPOINT inside one transaction and commits
once: concurrent sales share one fsync (group commit). A piece that raises is rolled back alone.
Results are handed back only after COMMIT returns, and with synchronous=FULL in WAL mode a
returned COMMIT is on disk (docs/architecture.md, "Durability").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from posedge.agent.errors import StorageCorrupt, StorageError
from posedge.agent.store.failures import classify
from posedge.agent.store.schema import migrate

log = logging.getLogger("posedge.store")
T = TypeVar("T")
Work = Callable[[sqlite3.Connection], T]

PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA foreign_keys = ON",
)


def open_writer_connection(path: Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open (creating if missing) and set the pragmas; raises sqlite3 errors unclassified."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute(PRAGMAS[0]).fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
        for pragma in PRAGMAS[1:]:
            conn.execute(pragma)
        return conn
    except BaseException:
        conn.close()
        raise


class _LoopFuture:
    """The writer's side of an asyncio future: resolved on its loop with one call_soon_threadsafe.

    Cheaper than chaining a concurrent Future through asyncio.wrap_future (locks, callbacks, state
    copying), which shows on the one-till commit path."""

    __slots__ = ("loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future = loop.create_future()

    def set_running_or_notify_cancel(self) -> bool:
        return not self.future.cancelled()

    def set_result(self, value: object) -> None:
        self._settle_on_loop(True, value)

    def set_exception(self, exc: BaseException) -> None:
        self._settle_on_loop(False, exc)

    def _settle_on_loop(self, ok: bool, value: object) -> None:
        try:
            self.loop.call_soon_threadsafe(_settle, self.future, ok, value)
        except RuntimeError:  # the loop is closed (shutdown): nobody waits; the write itself stands
            log.info("event=write_result_dropped reason=loop_closed")


def _settle(future: asyncio.Future, ok: bool, value: object) -> None:
    if future.cancelled():
        return  # the caller went away (request cancelled); the write itself stands
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)  # type: ignore[arg-type]


@dataclass
class _Job:
    work: Callable[[sqlite3.Connection], object]
    future: concurrent.futures.Future | _LoopFuture


_STOP = object()


class StoreWriter:
    def __init__(self, path: Path, *, group_commit_max: int = 64, busy_timeout_ms: int = 5000) -> None:
        self.path = Path(path)
        self.group_commit_max = group_commit_max
        self.busy_timeout_ms = busy_timeout_ms
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._failure: StorageError | None = None
        self.on_health: Callable[[StorageError | None], None] = lambda failure: None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> StorageError | None:
        """Open and migrate (in the caller's thread), then start the writer thread.

        A database that cannot be opened does not stop the agent: the failure is returned and
        reported, every write answers it, and the writer tries to open again on the next write
        (a corrupt file is never retried: it must not be touched).
        """
        self._try_open()
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()
        return self._failure

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def failure(self) -> StorageError | None:
        return self._failure

    # -- API ---------------------------------------------------------------------------------
    def submit(self, work: Work[T]) -> "concurrent.futures.Future[T]":
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._thread is None:
            future.set_exception(StorageError("the store is not running"))
        else:
            self._queue.put(_Job(work, future))
        return future

    async def write(self, work: Work[T]) -> T:
        if self._thread is None:
            raise StorageError("the store is not running")
        handle = _LoopFuture(asyncio.get_running_loop())
        self._queue.put(_Job(work, handle))
        return await handle.future

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop_after = False
            while len(batch) < self.group_commit_max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                batch.append(more)
            self._run_batch(batch)
            if stop_after:
                return

    def _run_batch(self, batch: list[_Job]) -> None:
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        conn = self._connection()
        if conn is None:
            for job in jobs:
                job.future.set_exception(self._failure)
            return
        try:
            outcomes = self._execute(conn, jobs)
            conn.execute("COMMIT")
        except Exception as exc:  # the transaction is gone: nobody in this batch was recorded
            self._abandon(conn)
            failure = classify(exc, self.path)
            self._set_failure(failure)
            for job in jobs:
                job.future.set_exception(failure)
            return
        self._set_failure(None)
        for job, (ok, value) in zip(jobs, outcomes):
            if ok:
                job.future.set_result(value)
            else:
                job.future.set_exception(value)

    def _execute(self, conn: sqlite3.Connection, jobs: list[_Job]) -> list[tuple[bool, object]]:
        conn.execute("BEGIN IMMEDIATE")
        if len(jobs) == 1:  # alone in the transaction: no savepoint needed, a failure rolls back all
            try:
                return [(True, jobs[0].work(conn))]
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and _is_storage_failure(exc):
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")  # an empty transaction for the caller's COMMIT
                return [(False, exc)]
        outcomes: list[tuple[bool, object]] = []
        for job in jobs:
            conn.execute("SAVEPOINT work")
            try:
                value = job.work(conn)
            except Exception as exc:
                if not conn.in_transaction:
                    raise  # SQLite rolled back the whole transaction (disk full, I/O error)
                if isinstance(exc, sqlite3.Error) and _is_storage_failure(exc):
                    raise
                conn.execute("ROLLBACK TO work")
                conn.execute("RELEASE work")
                outcomes.append((False, exc))
                continue
            conn.execute("RELEASE work")
            outcomes.append((True, value))
        return outcomes

    def _abandon(self, conn: sqlite3.Connection) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            log.warning("event=rollback_failed file=%s", self.path)

    def _connection(self) -> sqlite3.Connection | None:
        if self._conn is None and not isinstance(self._failure, StorageCorrupt):
            self._try_open()
        return self._conn

    def _try_open(self) -> None:
        conn = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = open_writer_connection(self.path, self.busy_timeout_ms)
            applied = migrate(conn)
            if applied:
                log.info("event=schema_migrated file=%s applied=%s", self.path, ",".join(applied))
        except Exception as exc:
            if conn is not None:
                conn.close()
            self._set_failure(classify(exc, self.path))
            return
        self._conn = conn
        self._set_failure(None)

    def _set_failure(self, failure: StorageError | None) -> None:
        changed = (failure is None) != (self._failure is None) or (
            failure is not None and self._failure is not None and failure.code != self._failure.code
        )
        self._failure = failure
        if not changed:
            return
        if failure is None:
            log.info("event=storage_ok file=%s", self.path)
        else:
            log.error("event=storage_failed file=%s code=%s message=%r", self.path, failure.code, failure.message)
        self.on_health(failure)


def _is_storage_failure(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_READONLY"))
