"""The single writer: one SQLite connection, every domain write, two ways to reach it.

Callers submit `work(conn) -> T`. Normally the writer thread takes whatever work is queued (up to
`group_commit_max`), runs each piece in its own SAVEPOINT inside one transaction and commits once:
concurrent sales share one fsync (group commit). A piece that raises is rolled back alone.

A write from the asyncio loop that is alone (no other write waiting or running, the connection
free) and finds the disk fast (recent commits under `inline_max_ms`, none stalled) runs on the
loop thread instead: the same connection, the same transaction and COMMIT, no hop to the writer
thread and back. Those two hops cost a single till a fifth of its commit time on a fast disk. A
slow or stalled disk sends every write to the thread until it is fast again, so the loop is never
held long, and another process's write lock is never waited for on the loop. A lock makes the
connection the writer thread's or the loop's, never both.

Results are handed back only after COMMIT returns, and with synchronous=FULL in WAL mode a
returned COMMIT is on disk (docs/architecture.md, "Durability"). SQLite's automatic checkpoint is
off on this connection (it would run inside a COMMIT, possibly on the loop): the checkpointer
(checkpointer.py) does it from its own connection, as often as SQLite would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import os
import queue
import sqlite3
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from posedge.agent.errors import StorageCorrupt, StorageError
from posedge.agent.store.checkpointer import Checkpointer
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
# The checkpointer checkpoints (see module doc), and the writer thread waits for another process's
# lock itself (_begin_waiting), so that the loop never does. A WAL that grew past a checkpoint's
# worth (a big import, a long reader) is cut back to WAL_SIZE_LIMIT when it starts over, so the
# -wal file stays bounded for years; below that it is overwritten in place (docs/architecture.md).
WAL_SIZE_LIMIT = 6 * 1024 * 1024
WRITER_PRAGMAS = ("PRAGMA wal_autocheckpoint = 0", "PRAGMA busy_timeout = 0",
                  f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
BUSY_DELAYS_MS = (1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100)  # SQLite's busy handler's steps
# The disk is fast when three quarters of the last RECENT_COMMITS COMMIT statements (the fsync, not
# the work before it) took under inline_max_ms and none took STALL_FACTOR times that: one stall
# sends writes to the thread for the next 16.
RECENT_COMMITS = 16
STALL_FACTOR = 5


STATE_FILE_MODE = 0o600  # member and sale data: the agent's user only
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def open_writer_connection(path: Path, busy_timeout_ms: int = 5000) -> sqlite3.Connection:
    """Open (creating if missing, mode 0600) and set the pragmas; raises sqlite3 errors unclassified."""
    _create_private(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute(PRAGMAS[0]).fetchone()[0]
        if mode.lower() != "wal":
            raise sqlite3.OperationalError(f"cannot switch {path} to WAL mode (got {mode})")
        for pragma in PRAGMAS[1:]:
            conn.execute(pragma)
        tighten_modes(path)
        return conn
    except BaseException:
        conn.close()
        raise


def _create_private(path: Path) -> None:
    # SQLite creates the -wal and -shm with the database file's mode, so that one is made 0600 here
    # (whatever the umask), before SQLite makes it.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, STATE_FILE_MODE))
    except FileExistsError:
        pass
    except OSError:  # a directory we cannot write to: SQLite reports it, classified (failures.py)
        pass


def tighten_modes(path: Path) -> None:
    """The database and its side files lose any group/other access (files from older versions)."""
    for file in [path, *(Path(f"{path}{suffix}") for suffix in SQLITE_SIDE_FILES)]:
        try:
            mode = stat.S_IMODE(file.stat().st_mode)
            if mode & 0o077:
                os.chmod(file, STATE_FILE_MODE)
                log.warning("event=state_file_mode_fixed file=%s was=%o now=600", file, mode)
        except FileNotFoundError:
            continue
        except OSError as exc:  # not ours, or a read-only file system: reported, never fatal
            log.warning("event=state_file_mode_not_fixed file=%s error=%s", file, exc.__class__.__name__)


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
    durable: bool = True


_STOP = object()
_CHECKPOINT = object()
_NOT_INLINE = object()  # the inline path gave way (another process's lock, a queued job): use the thread


class StoreWriter:
    def __init__(self, path: Path, *, group_commit_max: int = 64, busy_timeout_ms: int = 5000,
                 inline_max_ms: float = 2.0) -> None:
        self.path = Path(path)
        self.group_commit_max = group_commit_max
        self.busy_timeout_ms = busy_timeout_ms
        self.inline_max_s = inline_max_ms / 1000  # 0: every write goes through the writer thread
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._failure: StorageError | None = None
        self._owner = threading.Lock()  # held by whoever uses the connection: the writer thread or the loop
        self._writing = 0  # loop-side write() calls under way (touched on the loop only)
        self._recent: deque[float] = deque(maxlen=RECENT_COMMITS)  # seconds per COMMIT statement (the fsync)
        self.checkpointer = Checkpointer(self.path, may_run=self._healthy, finish=lambda: self._queue.put(_CHECKPOINT))
        self.counts = {"inline": 0, "batches": 0, "batched_jobs": 0, "relaxed_batches": 0, "writer_checkpoints": 0}
        self.commit_statements = 0  # COMMITs that returned, relaxed ones too, and the seconds they took
        self.commit_s_total = 0.0
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
        self.checkpointer.start()
        return self._failure

    def stop(self, timeout: float = 5.0) -> None:
        self.checkpointer.stop(timeout)
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._thread = None
        with self._owner:
            if self._conn is not None:
                self._checkpoint(self._conn)
                self._conn.close()
                self._conn = None

    @property
    def failure(self) -> StorageError | None:
        return self._failure

    def health_problem(self) -> str | None:
        """For the service watchdog: a writer thread that died cannot commit; a storage failure it reports
        is not one (the agent serves and says so, and a restart does not free a disk)."""
        thread = self._thread
        if thread is not None and not thread.is_alive():
            return "the store writer thread has died"
        return None

    def status(self) -> dict[str, object]:
        recent = list(self._recent)
        return {**self.counts, **self.checkpointer.counts, "inline_enabled": self.inline_max_s > 0,
                "recent_commit_max_ms": round(max(recent) * 1000, 2) if recent else None,
                "commit_statements": self.commit_statements, "commit_s_total": round(self.commit_s_total, 6)}

    # -- API ---------------------------------------------------------------------------------
    def submit(self, work: Work[T], *, durable: bool = True) -> "concurrent.futures.Future[T]":
        """From any thread: the writer thread runs it (group commit with whatever else is queued).

        `durable=False` is for bookkeeping whose loss in a power cut is harmless (a print job's
        state): a batch of only such work commits without waiting for the fsync (synchronous =
        NORMAL). It survives the agent being killed, and is on disk with the next durable commit."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._thread is None:
            future.set_exception(StorageError("the store is not running"))
        else:
            self._queue.put(_Job(work, future, durable))
        return future

    async def write(self, work: Work[T]) -> T:
        """From the asyncio loop: alone on a fast disk it commits right here, else via the writer thread."""
        if self._thread is None:
            raise StorageError("the store is not running")
        self._writing += 1
        try:
            if self._inline_allowed():
                # One turn of the loop first: writes arriving together see each other and share a commit.
                await asyncio.sleep(0)
                if self._writing == 1 and self._owner.acquire(blocking=False):
                    try:
                        value = self._write_inline(work)
                    finally:
                        self._owner.release()
                    if value is not _NOT_INLINE:
                        return value  # type: ignore[return-value]
            handle = _LoopFuture(asyncio.get_running_loop())
            self._queue.put(_Job(work, handle))
            return await handle.future
        finally:
            self._writing -= 1

    # -- the inline path (on the loop thread, holding the connection) ------------------------
    def _inline_allowed(self) -> bool:
        if self.inline_max_s <= 0 or self._writing != 1 or not self._healthy():
            return False
        return self._queue.empty() and disk_is_fast(self._recent, self.inline_max_s)

    def _write_inline(self, work: Work[T]) -> T | object:
        conn = self._conn
        if conn is None or not self._healthy() or not self._queue.empty():
            return _NOT_INLINE  # things changed during the loop turn: the writer thread sorts it out
        try:
            outcome = self._commit(conn, [work], begin=self._begin_without_waiting)
        except _LockedElsewhere:
            return _NOT_INLINE
        ok, value = outcome[0]
        self.counts["inline"] += 1
        self.checkpointer.committed()
        if not ok:
            raise value  # type: ignore[misc]
        return value

    @staticmethod
    def _begin_without_waiting(conn: sqlite3.Connection) -> None:
        # Another process (posedge data import) may hold the write lock: never wait for it on the loop.
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _LockedElsewhere() from None
            raise

    def _begin_waiting(self, conn: sqlite3.Connection) -> None:
        """BEGIN IMMEDIATE, waiting up to busy_timeout_ms for another process's write lock (thread only)."""
        deadline = time.monotonic() + self.busy_timeout_ms / 1000
        for step in itertools.count():
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not _is_busy(exc) or left <= 0:
                    raise
                time.sleep(min(left, BUSY_DELAYS_MS[min(step, len(BUSY_DELAYS_MS) - 1)] / 1000))

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            checkpoint = item is _CHECKPOINT
            batch: list[_Job] = [] if checkpoint else [item]
            stop_after = False
            while len(batch) < self.group_commit_max:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stop_after = True
                    break
                if more is _CHECKPOINT:
                    checkpoint = True
                    continue
                batch.append(more)
            with self._owner:
                settled = self._run_batch(batch) if batch else []
                if checkpoint and self._conn is not None:  # _checkpoint skips a failed store itself
                    self._checkpoint(self._conn)
            # Answered once the connection is free: a caller that writes again at once may commit inline.
            for job, ok, value in settled:
                if ok:
                    job.future.set_result(value)
                else:
                    job.future.set_exception(value)  # type: ignore[arg-type]
            if stop_after:
                return

    def _run_batch(self, batch: list[_Job]) -> list[tuple[_Job, bool, object]]:
        """Commit the batch; returns each job's outcome, for the caller to hand back."""
        jobs = [job for job in batch if job.future.set_running_or_notify_cancel()]
        if not jobs:
            return []
        conn = self._connection()
        if conn is None:
            return [(job, False, self._failure) for job in jobs]
        relaxed = not any(job.durable for job in jobs)
        try:
            outcomes = self._commit(conn, [job.work for job in jobs], begin=self._begin_waiting, relaxed=relaxed)
        except StorageError as failure:
            return [(job, False, failure) for job in jobs]
        if relaxed:
            self.counts["relaxed_batches"] += 1
        self.counts["batches"] += 1
        self.counts["batched_jobs"] += len(jobs)
        self.checkpointer.committed()
        return [(job, ok, value) for job, (ok, value) in zip(jobs, outcomes)]

    # -- one transaction (whoever holds the connection) ----------------------------------------
    def _commit(self, conn: sqlite3.Connection, works: list[Work], begin: Callable[[sqlite3.Connection], None],
                relaxed: bool = False) -> list[tuple[bool, object]]:
        """Run `works` in one transaction and COMMIT. A failure of the whole transaction raises the
        classified StorageError (and is reported); a failing piece is its own outcome."""
        committing = None
        try:
            if relaxed:  # the level is read at COMMIT, and may only change outside a transaction
                conn.execute("PRAGMA synchronous = NORMAL")
            begin(conn)
            outcomes = self._execute(conn, works)
            if conn.in_transaction:  # not when the only piece failed and was rolled back
                committing = time.perf_counter()
                conn.execute("COMMIT")
        except _LockedElsewhere:
            raise
        except Exception as exc:  # the transaction is gone: nobody in it was recorded
            self._abandon(conn)
            failure = classify(exc, self.path)
            self._set_failure(failure)
            raise failure from None
        finally:
            if relaxed:
                self._restore_full_sync(conn)
        if committing is not None:
            took = time.perf_counter() - committing
            self.commit_statements += 1
            self.commit_s_total += took
            if not relaxed:  # how long the disk took: only fsync'd COMMITs say
                self._recent.append(took)
        self._set_failure(None)
        return outcomes

    def _restore_full_sync(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error:  # cannot leave the connection relaxed: the next sale must be durable
            log.error("event=sync_level_restore_failed file=%s action=reopen", self.path)
            conn.close()
            self._conn = None

    def _execute(self, conn: sqlite3.Connection, works: list[Work]) -> list[tuple[bool, object]]:
        if len(works) == 1:  # alone in the transaction: no savepoint needed, a failure rolls back all
            try:
                return [(True, works[0](conn))]
            except Exception as exc:
                if isinstance(exc, sqlite3.Error) and _is_storage_failure(exc):
                    raise
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                return [(False, exc)]
        outcomes: list[tuple[bool, object]] = []
        for work in works:
            conn.execute("SAVEPOINT work")
            try:
                value = work(conn)
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

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """On the writer connection, between transactions, so it reaches the end of the WAL and the
        next commit starts the WAL over: after each checkpointer pass, and at stop."""
        if not self._healthy():
            return
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the next write reports storage trouble; a checkpoint only waits
            log.warning("event=checkpoint_failed file=%s error=%r", self.path, str(exc))
            return
        self.counts["writer_checkpoints"] += 1

    def _healthy(self) -> bool:
        return self._conn is not None and self._failure is None

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
            for pragma in WRITER_PRAGMAS:
                conn.execute(pragma)
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
        if failure is not None:
            self._recent.clear()  # after trouble, the disk must prove itself fast again before inline
        if not changed:
            return
        if failure is None:
            log.info("event=storage_ok file=%s", self.path)
        else:
            log.error("event=storage_failed file=%s code=%s message=%r", self.path, failure.code, failure.message)
        self.on_health(failure)


def disk_is_fast(recent_s: "deque[float] | list[float]", limit_s: float) -> bool:
    """Whether a commit may run on the loop: RECENT_COMMITS durations known, three quarters of them
    under `limit_s`, none a stall (STALL_FACTOR times the limit)."""
    if len(recent_s) < RECENT_COMMITS or limit_s <= 0:
        return False
    ordered = sorted(recent_s)
    return ordered[len(ordered) * 3 // 4 - 1] < limit_s and ordered[-1] < STALL_FACTOR * limit_s


class _LockedElsewhere(Exception):
    """BEGIN IMMEDIATE found another process's write lock (inline path only)."""


def _is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorname", "") or "").startswith("SQLITE_BUSY") or "database is locked" in str(exc)


def _is_storage_failure(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_READONLY"))
