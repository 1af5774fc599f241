"""The retention feature: a thread that, every `[retention] interval_s` (and once soon after start),
runs a prune pass: for each kind of rule.py, small transactions through the single writer until a
batch finds less than `batch_rows` rows, resting `pause_ms` between two so that sales commit between
them. A prune is bookkeeping (`submit(durable=False)`): lost in a power cut, it is done again.

Freed pages are not given back to the file system: they go to SQLite's freelist and the next sales
reuse them, so the file stops growing once a window's worth of data is kept (proven by
tests/retention/test_year.py; docs/operations.md, "Retention").
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from posedge.agent.feature import EventListener
from posedge.agent.retention.config import RetentionConfig
from posedge.agent.retention.rules import RULES, Cutoffs
from posedge.agent.sales import SaleParticipant
from posedge.agent.store.writer import StoreWriter

log = logging.getLogger("posedge.agent.retention")

FIRST_PASS_DELAY_S = 30.0  # after start: the first sales of the day come before any housekeeping
WRITE_TIMEOUT_S = 60.0


class Retention:
    name = "retention"

    def __init__(self, config: RetentionConfig, writer: StoreWriter,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.config = config
        self.writer = writer
        self.clock = clock
        self.first_pass_delay_s = FIRST_PASS_DELAY_S
        self._listeners: list[EventListener] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.deleted: dict[str, int] = dict.fromkeys(RULES, 0)
        self.passes = 0
        self.last_pass_at: str | None = None
        self.last_error: str | None = None

    @property
    def participants(self) -> Sequence[SaleParticipant]:
        return ()

    @property
    def listeners(self) -> list[EventListener]:
        return self._listeners

    async def start(self) -> None:
        if not self.config.enabled:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="store-retention", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await _join(thread)

    def status(self) -> dict[str, Any]:
        return {"enabled": self.config.enabled, "passes": self.passes, "last_pass_at": self.last_pass_at,
                "deleted": dict(self.deleted), "last_error": self.last_error}

    # -- the pass ------------------------------------------------------------------------------
    def run_pass(self, now: datetime | None = None) -> dict[str, int]:
        """One pass over every rule at `now` (the clock's by default); returns the rows deleted per kind."""
        config = self.config
        cutoffs = Cutoffs.at(now or self.clock(), config.sales_days, config.outbox_acked_days, config.print_jobs_days)
        deleted = dict.fromkeys(RULES, 0)
        for kind, rule in RULES.items():
            while not self._stopping.is_set():
                count = self._batch(rule, cutoffs)
                deleted[kind] += count
                if count < config.batch_rows:
                    break
                self._stopping.wait(config.pause_ms / 1000)
        for kind, count in deleted.items():
            self.deleted[kind] += count
        self.passes += 1
        self.last_pass_at = cutoffs.now
        if any(deleted.values()):
            log.info("event=retention_pass %s", " ".join(f"{kind}={count}" for kind, count in deleted.items()))
        return deleted

    def _batch(self, rule: Callable[..., int], cutoffs: Cutoffs) -> int:
        limit = self.config.batch_rows
        return self.writer.submit(lambda conn: rule(conn, cutoffs, limit), durable=False).result(WRITE_TIMEOUT_S)

    def _run(self) -> None:
        wait = self.first_pass_delay_s
        while not self._stopping.wait(wait):
            wait = self.config.interval_s
            try:
                self.run_pass()
                self.last_error = None
            except Exception as exc:  # storage trouble is the writer's to report; the next pass tries again
                self.last_error = f"{exc.__class__.__name__}: {exc}"
                log.warning("event=retention_failed error=%r", self.last_error)


async def _join(thread: threading.Thread) -> None:
    await asyncio.to_thread(thread.join, WRITE_TIMEOUT_S)
