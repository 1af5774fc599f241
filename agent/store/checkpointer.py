"""The checkpointer: copies the WAL into the database file from its own connection and thread.

SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 WAL pages, so one sale in
every few dozen would wait for it (5 ms and more here), on the loop when that sale committed there.
The writer connection has it off, and the checkpoint is done in two passes:

1. here, PASSIVE, from this thread's own connection: the bulk of the copying and the fsync of the
   database file, while sales keep committing (a PASSIVE checkpoint takes no write lock);
2. then by the writer (`StoreWriter._checkpoint`), between two of its transactions: it copies only
   what was committed during pass 1, and nothing can be committed during it, so it reaches the end
   of the WAL and the next commit starts the WAL over.

Without pass 2, a checkpoint racing new commits never reaches the end of the WAL under a steady
load, and the WAL never starts over: it grows without end, and an fsync of a growing file costs
more than one that overwrites it in place.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from pathlib import Path
from typing import Callable

log = logging.getLogger("posedge.store")

CHECKPOINT_PAGES = 1000  # as SQLite's own automatic checkpoint: when the WAL holds about this many pages


class Checkpointer:
    def __init__(self, path: Path, *, may_run: Callable[[], bool], finish: Callable[[], None]) -> None:
        self.path = Path(path)
        self.may_run = may_run  # False while the store has failed: a corrupt file is never written
        self.finish = finish
        self.commits_per_checkpoint = 50  # learnt at each checkpoint: commits that fill CHECKPOINT_PAGES
        self.counts = {"checkpoints": 0}
        self._commits = 0  # commits seen (counted by whoever holds the writer connection)
        self._at_last = 0
        self._wanted = threading.Event()
        self._stopping = threading.Event()
        self._conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="store-checkpointer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._wanted.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._close()

    def committed(self) -> None:
        """One more commit in the WAL; wakes the thread when a checkpoint is due."""
        self._commits += 1
        if self._commits - self._at_last >= self.commits_per_checkpoint and not self._wanted.is_set():
            self._wanted.set()

    def learn(self, commits: int, wal_pages: int) -> None:
        """A checkpoint saw `wal_pages` WAL pages from `commits` commits: adjust how often to run."""
        if commits > 0 and wal_pages > 0:
            self.commits_per_checkpoint = max(1, min(10_000, round(CHECKPOINT_PAGES * commits / wal_pages)))

    def _run(self) -> None:
        while True:
            self._wanted.wait()
            if self._stopping.is_set():
                return
            self._wanted.clear()
            try:
                if self.may_run():
                    self._checkpoint()
            except Exception:  # a bug here must not end checkpoints for good (the WAL would grow)
                log.exception("event=checkpointer_error file=%s", self.path)

    def _checkpoint(self) -> None:
        commits, self._at_last = self._commits - self._at_last, self._commits
        try:
            conn = self._connection()
            _, wal_pages, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:  # the writer reports storage trouble; a checkpoint only waits
            log.warning("event=checkpoint_failed file=%s error=%r", self.path, str(exc))
            self._close()
            return
        self.counts["checkpoints"] += 1
        self.learn(commits, wal_pages)
        self.finish()  # the writer copies what was committed meanwhile, between two of its transactions

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA synchronous = FULL")  # WAL synced before the copy, the database after
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
